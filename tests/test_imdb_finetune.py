"""examples/imdb fine-tuning: pretrained word vectors (--embeddings, --freeze-embeddings, --unfreeze-after),
starting from a checkpoint (--init-from, --freeze-lstm), --resume, and the checkpoints' atomic writes and
load errors; on small synthetic data in the aclImdb layout and a small vectors file, all made here."""

import gzip
import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch

from lstm_ext.models import SentimentClassifier
from test_imdb_example import EXAMPLE_DIR, REPO, TINY_MODEL, train

sys.path.insert(0, str(EXAMPLE_DIR))
import checkpoints  # noqa: E402  (the example's modules, by their plain names)
import data as imdb_data  # noqa: E402
import synthetic  # noqa: E402
import train as train_script  # noqa: E402

VECTOR_DIM = 8
# Words of the synthetic reviews, one that is not in them, and the two specials, which are never looked up.
VECTOR_WORDS = synthetic.POSITIVE_WORDS[:4] + synthetic.NEGATIVE_WORDS[:4] + ["the", "movie", "zebra", "<unk>"]


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run_failing(command, cwd):
    """Runs a script of the example that must fail; returns its stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    return result.stderr


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """A GloVe-format file (plain and gzipped) and the vectors it gives each word (the first of a repeat)."""
    rng = random.Random(0)
    expected = {word: [round(rng.gauss(0, 1), 4) for _ in range(VECTOR_DIM)] for word in VECTOR_WORDS}
    lines = [f"{word} {' '.join(map(str, vector))}" for word, vector in expected.items()]
    lines.append("the " + " ".join(["9.0"] * VECTOR_DIM))  # a repeat: the first vector of a word counts
    lines.insert(3, "new york " + " ".join(["1.5"] * VECTOR_DIM))  # a word with a space, as in glove.840B
    folder = tmp_path_factory.mktemp("vectors")
    text = "\n".join(lines) + "\n"
    (folder / "vectors.txt").write_text(text)
    with gzip.open(folder / "vectors.txt.gz", "wt") as f:
        f.write(text)
    return folder / "vectors.txt", folder / "vectors.txt.gz", expected


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("small") / "aclImdb", train_size=120, test_size=40)


# ------------------------------------------------------------------------------------ reading vectors

def test_word_vectors_are_read_from_plain_and_gzipped_files(vectors):
    plain, gzipped, expected = vectors
    vocab = imdb_data.Vocabulary(["<pad>", "<unk>", "movie", "great", "plot", "awful", "the"])
    for path in (plain, gzipped):
        rows, found = imdb_data.read_word_vectors(path, vocab, dim=VECTOR_DIM, progress=False)
        assert found.tolist() == [False, False, True, True, False, True, True]
        for index in found.nonzero().flatten().tolist():
            assert rows[index].tolist() == pytest.approx(expected[vocab.itos[index]])  # "the": the first line's
        assert not rows[~found].any()


def test_word_vectors_of_another_dimension_or_malformed_lines_are_refused(vectors, tmp_path):
    plain, _, _ = vectors
    vocab = imdb_data.Vocabulary(["<pad>", "<unk>", "movie"])
    with pytest.raises(ValueError, match=f"dimension {VECTOR_DIM}, not 16"):
        imdb_data.read_word_vectors(plain, vocab, dim=16, progress=False)
    bad = tmp_path / "bad.txt"
    bad.write_text("movie 1 2 3\nplot 1 2\n")
    with pytest.raises(ValueError, match="line 2: expected a word and 3 numbers"):
        imdb_data.read_word_vectors(bad, vocab, progress=False)
    bad.write_text("movie 1 2 3\nplot 1 2 3 4\n")
    with pytest.raises(ValueError, match="line 2: expected a word and 3 numbers"):
        imdb_data.read_word_vectors(bad, vocab, progress=False)


def test_vector_coverage_counts_words_and_tokens():
    found = torch.tensor([False, False, True, False, True])  # 3 words, 2 with a vector
    token_ids = [torch.tensor([2, 2, 3, 1]), torch.tensor([4, 3])]  # 3 of 6 tokens have one; <unk> does not
    assert imdb_data.vector_coverage(found, token_ids) == (2, 3, 3, 6)


# ------------------------------------------------------------------------------ pretrained word vectors

def test_pretrained_vectors_report_their_coverage_and_frozen_rows_do_not_change(tmp_path, small_data, vectors):
    _, gzipped, expected = vectors
    out = tmp_path / "run"
    stdout = train(small_data, out, *TINY_MODEL, "--embed-dim", str(VECTOR_DIM), "--epochs", "2",
                   "--batch-size", "16", "--lr", "0.01", "--embeddings", str(gzipped), "--freeze-embeddings")

    # The coverage, counted here from the same training split.
    train_set, _, _, vocab = imdb_data.load_imdb(small_data, 25_000, 2, 500, 0.1, 0)
    with_vector = [index for index, word in enumerate(vocab.itos) if index >= 2 and word in expected]
    tokens = torch.cat(train_set.token_ids)
    covered_tokens = int(torch.isin(tokens, torch.tensor(with_vector)).sum())
    assert 0 < len(with_vector) < len(vocab) - 2 and 0 < covered_tokens < len(tokens)
    assert (f"pretrained vectors for {len(with_vector)} of {len(vocab) - 2} vocabulary words" in stdout and
            f"covering {covered_tokens} of {len(tokens)} training tokens" in stdout), stdout

    last = load(out / "last.pt")
    assert last["vocab"] == vocab.itos and last["epoch"] == 2
    embedding = last["model_state"]["embedding.weight"]
    for index in with_vector:  # exactly the file's values, after two epochs of training
        assert embedding[index].tolist() == pytest.approx(expected[vocab.itos[index]], abs=1e-6)
    torch.manual_seed(0)  # the initial weights of the run (--seed 0)
    initial = SentimentClassifier(**last["model_config"]).embedding.weight
    others = [index for index in range(2, len(vocab)) if index not in with_vector]
    assert (embedding[others] - initial[others]).abs().amax(dim=1).min() > 1e-4  # these rows did train
    assert not embedding[imdb_data.PAD_ID].any()


# -------------------------------------------------------------------------------------------- resume

def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, small_data, vectors):
    """Dropout, a warm-up across the interruption and embeddings unfrozen after it: all must carry over."""
    plain, _, expected = vectors
    options = [*TINY_MODEL, "--embed-dim", str(VECTOR_DIM), "--layers", "2", "--dropout", "0.3",
               "--batch-size", "16", "--lr", "0.01", "--warmup-steps", "9", "--embeddings", str(plain),
               "--unfreeze-after", "1"]  # 6 steps an epoch
    whole = tmp_path / "whole"
    train(small_data, whole, *options, "--epochs", "3")
    parts = tmp_path / "parts"
    train(small_data, parts, *options, "--epochs", "1")
    after_one_epoch = load(parts / "last.pt")
    stdout = train(small_data, parts, "--resume", "--epochs", "3")  # the run's own options, extended
    assert "resuming" in stdout and "epoch 1/3" not in stdout and "epoch 3/3" in stdout

    first, second = load(whole / "last.pt"), load(parts / "last.pt")
    assert first["epoch"] == second["epoch"] == 3
    for name, value in first["model_state"].items():
        torch.testing.assert_close(second["model_state"][name], value, msg=name)
    for state, other in zip(first["optimizer_state"]["state"].values(), second["optimizer_state"]["state"].values()):
        torch.testing.assert_close(other["exp_avg_sq"], state["exp_avg_sq"])
    assert first["scheduler_state"] == second["scheduler_state"] and first["scheduler_state"]["last_epoch"] == 18
    torch.testing.assert_close(load(parts / "best.pt")["model_state"], load(whole / "best.pt")["model_state"])
    assert json.loads((parts / "metrics.json").read_text()) == json.loads((whole / "metrics.json").read_text())

    # The pretrained rows stayed fixed through epoch 1 and trained after it.
    vocab = after_one_epoch["vocab"]
    rows = after_one_epoch["pretrained_rows"].nonzero().flatten().tolist()
    assert rows and all(after_one_epoch["model_state"]["embedding.weight"][i].tolist() ==
                        pytest.approx(expected[vocab[i]], abs=1e-6) for i in rows)
    moved = (first["model_state"]["embedding.weight"][rows] - torch.tensor([expected[vocab[i]] for i in rows]))
    assert moved.abs().amax(dim=1).min() > 1e-4


def test_resume_refuses_options_that_change_the_run(tmp_path, capsys):
    path = tmp_path / "last.pt"
    args = vars(train_script.build_parser().parse_args(["--hidden-size", "8", "--lr", "0.001"]))
    checkpoints.save_atomically({"model_config": {}, "model_state": {}, "vocab": [], "args": args, "epoch": 1,
                                 "optimizer_state": {}, "scheduler_state": {}, "rng_states": [], "best": {}}, path)
    with pytest.raises(SystemExit):  # --hidden-size 8 is the run's own, and --epochs may change
        train_script.main(["--out", str(tmp_path), "--resume", "--lr", "0.5", "--hidden-size", "8", "--epochs", "9"])
    error = capsys.readouterr().err.splitlines()[-1]
    assert "these differ from them: --lr 0.5 (the run has --lr 0.001). Only" in error, error
    with pytest.raises(checkpoints.CheckpointError, match="no such file"):
        train_script.main(["--out", str(tmp_path / "elsewhere"), "--resume"])


# ------------------------------------------------------------------------------------------ fine-tuning

@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A model trained on synthetic reviews, and new reviews whose sentiment words mean the opposite."""
    folder = tmp_path_factory.mktemp("fine-tuning")
    base_data = synthetic.write_dataset(folder / "base" / "aclImdb", train_size=600, test_size=40, seed=1)
    out = folder / "base-run"
    train(base_data, out, "--embed-dim", "16", "--hidden-size", "16", "--layers", "1", "--dropout", "0",
          "--epochs", "6", "--batch-size", "16", "--lr", "0.01", "--device", "cpu")
    new_data = synthetic.write_dataset(folder / "new" / "aclImdb", train_size=300, test_size=200, seed=2)
    for split in ("train", "test"):  # swap the labels: a learnable signal the base model gets wrong
        (new_data / split / "pos").rename(new_data / split / "was-pos")
        (new_data / split / "neg").rename(new_data / split / "pos")
        (new_data / split / "was-pos").rename(new_data / split / "neg")
    return out / "best.pt", new_data


@pytest.mark.parametrize("freeze_lstm", [False, True])
def test_fine_tuning_from_a_checkpoint_learns_the_new_data(tmp_path, base_model, freeze_lstm):
    checkpoint_path, new_data = base_model
    out = tmp_path / "fine-tuned"
    stdout = train(new_data, out, "--init-from", str(checkpoint_path), "--epochs", "6", "--batch-size", "16",
                   "--lr", "0.01", "--warmup-steps", "5", "--device", "cpu", *(["--freeze-lstm"] * freeze_lstm))
    metrics = json.loads((out / "metrics.json").read_text())
    before = metrics["before_fine_tuning"]
    assert "before fine-tuning: validation accuracy" in stdout and "test before fine-tuning" in stdout
    assert before["accuracy"] < 0.4, stdout  # the base model learned the opposite
    assert metrics["accuracy"] >= 0.8 and metrics["accuracy"] > before["accuracy"] + 0.4, stdout

    base, fine_tuned = load(checkpoint_path), load(out / "best.pt")
    assert fine_tuned["vocab"] == base["vocab"] and fine_tuned["model_config"] == base["model_config"]
    assert fine_tuned["args"]["hidden_size"] == 16 and fine_tuned["args"]["init_from"] == str(checkpoint_path)
    changed = {name for name, value in fine_tuned["model_state"].items()
               if not torch.equal(value, base["model_state"][name])}
    if freeze_lstm:  # only the output layer trains
        assert changed == {"classifier.weight", "classifier.bias"}
    else:
        assert {"embedding.weight", "lstm.weight_ih_l0", "classifier.weight"} <= changed


def test_fine_tuning_refuses_options_that_conflict_with_the_checkpoint(tmp_path, capsys):
    path = tmp_path / "model.pt"
    args = vars(train_script.build_parser().parse_args(["--hidden-size", "8", "--no-bidirectional"]))
    model = SentimentClassifier(vocab_size=3, embed_dim=128, hidden_size=8)
    checkpoints.save_atomically({"model_config": {}, "model_state": model.state_dict(), "vocab": [],
                                 "args": args}, path)
    with pytest.raises(SystemExit):  # --embed-dim 128 is the checkpoint's too: no conflict
        train_script.main(["--init-from", str(path), "--hidden-size", "16", "--bidirectional", "--embed-dim", "128"])
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.endswith("these options conflict with it: --hidden-size 16 (the checkpoint has --hidden-size 8); "
                          "--bidirectional (the checkpoint has --no-bidirectional)"), error
    with pytest.raises(SystemExit):
        train_script.main(["--init-from", str(path), "--embeddings", "vectors.txt"])
    assert "exclude each other" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- checkpoints

def write_checkpoint(path):
    model = SentimentClassifier(vocab_size=4, embed_dim=4, hidden_size=4)
    checkpoint = {"model_config": {"vocab_size": 4, "embed_dim": 4, "hidden_size": 4},
                  "model_state": model.state_dict(), "vocab": ["<pad>", "<unk>", "good", "bad"], "args": {"max_len": 10}}
    checkpoints.save_atomically(checkpoint, path)
    return checkpoint


def test_checkpoints_are_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    first = write_checkpoint(path)
    write_checkpoint(path)  # over an existing one
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]

    def interrupted_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_atomically({"model_state": {}}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left, the old one whole
    assert checkpoints.load_checkpoint(path)["vocab"] == first["vocab"]


def test_corrupt_and_foreign_checkpoints_are_refused_with_a_clear_error(tmp_path):
    good = tmp_path / "good.pt"
    write_checkpoint(good)
    model = checkpoints.build_model(checkpoints.load_checkpoint(good), good, lstm="torch")
    assert isinstance(model.lstm, torch.nn.LSTM)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    damaged = tmp_path / "damaged.pt"
    content = bytearray(good.read_bytes())
    content[100:400] = b"x" * 300  # the archive's index is intact, a member is not
    damaged.write_bytes(bytes(content))
    foreign = tmp_path / "state_dict.pt"
    torch.save(SentimentClassifier(vocab_size=4, embed_dim=4, hidden_size=4).state_dict(), foreign)
    pickled_module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled_module)
    mismatched = tmp_path / "mismatched.pt"
    checkpoints.save_atomically(dict(checkpoints.load_checkpoint(good), model_config={
        "vocab_size": 4, "embed_dim": 4, "hidden_size": 5}), mismatched)

    cases = {truncated: "not the zip archive torch.save writes", text: "not the zip archive torch.save writes",
             damaged: "is a damaged checkpoint", foreign: "has no model_config, model_state, vocab, args",
             pickled_module: "holds Python objects besides tensors", tmp_path / "missing.pt": "no such file"}
    for path, message in cases.items():
        with pytest.raises(checkpoints.CheckpointError, match=re.escape(f"{path}") + ".*" + re.escape(message)):
            checkpoints.build_model(checkpoints.load_checkpoint(path), path)
    with pytest.raises(checkpoints.CheckpointError, match="weights do not fit the model"):
        checkpoints.build_model(checkpoints.load_checkpoint(mismatched), mismatched)
    with pytest.raises(checkpoints.CheckpointError, match="not a checkpoint to resume from .*no epoch, optimizer"):
        checkpoints.load_checkpoint(good, training_state=True)

    # The scripts print the error, without a traceback, and fail.
    stderr = run_failing([sys.executable, str(EXAMPLE_DIR / "predict.py"), "--checkpoint", str(truncated),
                          "--device", "cpu", "a fine film"], cwd=tmp_path)
    assert f"error: {truncated} is not a checkpoint" in stderr and "Traceback" not in stderr
    with pytest.raises(checkpoints.CheckpointError, match=re.escape(str(pickled_module))):
        train_script.main(["--init-from", str(pickled_module)])
