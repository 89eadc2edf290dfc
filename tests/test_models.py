"""lstm_ext.models.SentimentClassifier: the fused model equals its nn.LSTM twin (logits and every
gradient, float64 to 1e-9) on ragged batches, reads each sequence's own last state, and ignores padding."""

import pytest
import torch

from lstm_ext.models import SentimentClassifier

VOCAB_SIZE = 50
PAD = 0
SHAPES = [
    pytest.param(1, False, id="1layer"),
    pytest.param(1, True, id="1layer-bidirectional"),
    pytest.param(2, False, id="2layers"),
    pytest.param(2, True, id="2layers-bidirectional"),
]
IMPLEMENTATIONS = ["fused", "torch"]


def make_model(lstm, num_layers=1, bidirectional=False, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"embed_dim": 6, "hidden_size": 5, **kwargs}
    return SentimentClassifier(VOCAB_SIZE, num_layers=num_layers, bidirectional=bidirectional, padding_idx=PAD,
                               lstm=lstm, **kwargs)


def ragged_batch(lengths, device="cpu", seed=1):
    """Token ids [B, max(lengths)] with random real tokens up to each length and PAD after it."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    tokens = torch.randint(1, VOCAB_SIZE, (len(lengths), int(lengths.max())), generator=generator)
    padding = torch.arange(tokens.size(1)) >= lengths[:, None]
    return tokens.masked_fill(padding, PAD).to(device), lengths


# Unsorted, with the shortest (1) and the longest sequence, repeats, and the longest not first.
RAGGED_LENGTHS = [4, 9, 1, 6, 9, 2, 7]


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
def test_same_seed_builds_the_same_weights_and_state_dicts_move_both_ways(num_layers, bidirectional):
    fused = make_model("fused", num_layers, bidirectional)
    twin = make_model("torch", num_layers, bidirectional)
    assert list(fused.state_dict()) == list(twin.state_dict())
    for name, value in fused.state_dict().items():
        torch.testing.assert_close(value, twin.state_dict()[name], rtol=0, atol=0, msg=name)

    other = make_model("torch", num_layers, bidirectional, seed=1)
    fused.load_state_dict(other.state_dict())
    twin.load_state_dict(fused.state_dict())
    for name, value in other.state_dict().items():
        assert torch.equal(twin.state_dict()[name], value), name


@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
def test_logits_and_gradients_equal_the_nn_lstm_twin_on_ragged_batches(device, num_layers, bidirectional):
    # Training mode, so the fused LSTM keeps what its backward needs; dropout 0 keeps both deterministic.
    twin = make_model("torch", num_layers, bidirectional).double().to(device)
    fused = make_model("fused", num_layers, bidirectional, seed=7).double().to(device)
    fused.load_state_dict(twin.state_dict())
    tokens, lengths = ragged_batch(RAGGED_LENGTHS, device)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0], device=device)

    logits = {}
    for name, model in (("fused", fused), ("torch", twin)):
        logits[name] = model(tokens, lengths)
        torch.nn.functional.cross_entropy(logits[name], labels).backward()

    assert logits["fused"].shape == (len(RAGGED_LENGTHS), 2)
    torch.testing.assert_close(logits["fused"], logits["torch"], rtol=0, atol=1e-9)
    twin_parameters = dict(twin.named_parameters())
    for name, parameter in fused.named_parameters():
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, twin_parameters[name].grad, rtol=0, atol=1e-9, msg=name)


@pytest.mark.parametrize("lstm", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_layers, bidirectional", SHAPES)
def test_each_sequence_is_classified_from_its_own_last_state(device, lstm, num_layers, bidirectional):
    """In a padded batch, every row's logits are those of the sequence run alone, without padding."""
    model = make_model(lstm, num_layers, bidirectional).double().to(device).eval()
    tokens, lengths = ragged_batch(RAGGED_LENGTHS, device)
    batched = model(tokens, lengths)
    for row, length in enumerate(lengths.tolist()):
        alone = model(tokens[row:row + 1, :length], lengths[row:row + 1])
        torch.testing.assert_close(batched[row:row + 1], alone, rtol=0, atol=1e-12, msg=f"row {row}")


@pytest.mark.parametrize("lstm", IMPLEMENTATIONS)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_logits_map_the_last_layers_final_states_of_both_directions(device, lstm, num_layers):
    """The features are [forward state after the last token, backward state after the first token]."""
    model = make_model(lstm, num_layers, bidirectional=True).double().to(device).eval()
    tokens, lengths = ragged_batch(RAGGED_LENGTHS, device)
    logits = model(tokens, lengths)
    hidden = model.hidden_size
    for row, length in enumerate(lengths.tolist()):
        output, _ = model.lstm(model.embedding(tokens[row:row + 1, :length]))  # [1, length, 2H], no padding
        features = torch.cat([output[0, -1, :hidden], output[0, 0, hidden:]])
        torch.testing.assert_close(logits[row], model.classifier(features), rtol=0, atol=1e-12, msg=f"row {row}")


@pytest.mark.parametrize("lstm", IMPLEMENTATIONS)
def test_padding_changes_neither_logits_nor_gradients(device, lstm):
    model = make_model(lstm, num_layers=2, bidirectional=True).double().to(device)
    tokens, lengths = ragged_batch(RAGGED_LENGTHS, device)
    padding = torch.arange(tokens.size(1), device=device) >= lengths.to(device)[:, None]
    # Ids that appear only in padding positions: if padding leaked in, their embeddings would get gradient.
    only_in_padding = torch.tensor([VOCAB_SIZE - 2, VOCAB_SIZE - 1], device=device)
    tokens = tokens.masked_fill(torch.isin(tokens, only_in_padding), 1)
    garbage = only_in_padding[torch.randint(0, 2, tokens.shape, device=device)]
    with_garbage = torch.where(padding, garbage, tokens)

    clean_logits = model(tokens, lengths)
    garbage_logits = model(with_garbage, lengths)
    garbage_logits.sum().backward()

    torch.testing.assert_close(garbage_logits, clean_logits, rtol=0, atol=0)
    embedding_grad = model.embedding.weight.grad
    assert embedding_grad[only_in_padding].abs().max() == 0
    assert embedding_grad[1:VOCAB_SIZE - 2].abs().sum() > 0  # the real tokens did get gradient


def test_shapes_dropout_placement_and_eval_determinism():
    model = make_model("torch", num_layers=2, bidirectional=True, dropout=0.4, num_classes=3)
    assert model.lstm.dropout == 0.4 and model.dropout.p == 0.4
    assert make_model("torch", num_layers=1, dropout=0.4).lstm.dropout == 0  # no inter-layer dropout to apply
    assert model.classifier.in_features == 2 * 5
    tokens, lengths = ragged_batch(RAGGED_LENGTHS)
    model.eval()
    logits = model(tokens, lengths)
    assert logits.shape == (len(RAGGED_LENGTHS), 3)
    assert torch.equal(model(tokens, lengths), logits)
    model.train()
    assert not torch.equal(model(tokens, lengths), logits)  # dropout is active in training


def test_bad_arguments_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="lstm must be one of"):
        make_model("cudnn")
    model = make_model("torch")
    tokens, lengths = ragged_batch(RAGGED_LENGTHS)
    with pytest.raises(ValueError, match=r"tokens must be \[batch, time\]"):
        model(tokens[0], lengths[:1])
    with pytest.raises(ValueError, match=r"lengths must be \[batch\]"):
        model(tokens, lengths[:-1])
