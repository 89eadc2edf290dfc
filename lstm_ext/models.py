"""Models built on the fused LSTM, small enough to test and benchmark.

    from lstm_ext.models import SentimentClassifier

    model = SentimentClassifier(vocab_size=25_000, embed_dim=128, hidden_size=256, bidirectional=True)
    logits = model(tokens, lengths)        # tokens: [B, T] padded ids, lengths: [B] -> logits: [B, 2]

``lstm="torch"`` builds the same model on ``torch.nn.LSTM``; both hold the same parameter names, and
from the same seed the same weights, so state dicts move between the two and results can be compared.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from .modules import LSTM

LSTM_IMPLEMENTATIONS = {"fused": LSTM, "torch": nn.LSTM}


class SentimentClassifier(nn.Module):
    """Embedding -> LSTM -> dropout -> linear, over each sequence's own last state.

    The padded batch is packed before the LSTM, so every sequence stops at its own length: the forward
    direction's final state is the one after the sequence's last real token, the backward direction
    starts from that token, and padding never reaches the result nor receives a gradient.

    Args:
        vocab_size: number of token ids, padding included.
        embed_dim: size of the token embeddings (the LSTM's input size).
        hidden_size: LSTM hidden size per direction.
        num_layers: stacked LSTM layers.
        bidirectional: read each sequence in both directions and classify the two final states.
        dropout: dropout before the linear layer, and between LSTM layers when there are several.
        num_classes: number of logits per sequence.
        padding_idx: the token id of padding; its embedding stays zero and receives no gradient.
        lstm: "fused" for lstm_ext.LSTM, "torch" for torch.nn.LSTM.
        **lstm_options: further keyword arguments of lstm_ext.LSTM (forget_bias, recurrent_dropout, zoneout,
            layer_norm, peephole), passed to it as they are; lstm="fused" only.
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, num_classes: int = 2, padding_idx: int = 0,
                 lstm: str = "fused", **lstm_options) -> None:
        super().__init__()
        if lstm not in LSTM_IMPLEMENTATIONS:
            raise ValueError(f"lstm must be one of {sorted(LSTM_IMPLEMENTATIONS)}, got {lstm!r}")
        if lstm_options and lstm != "fused":
            raise ValueError(f"lstm={lstm!r} (torch.nn.LSTM) takes none of lstm_ext.LSTM's options, got "
                             f"{', '.join(f'{name}={value!r}' for name, value in lstm_options.items())}; "
                             f"they need lstm='fused'")
        self.num_layers = num_layers
        self.num_directions = 2 if bidirectional else 1
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=padding_idx)
        # Dropout inside the LSTM only acts between layers; a one-layer LSTM would just warn about it.
        self.lstm = LSTM_IMPLEMENTATIONS[lstm](embed_dim, hidden_size, num_layers=num_layers, batch_first=True,
                                               bidirectional=bidirectional,
                                               dropout=dropout if num_layers > 1 else 0.0, **lstm_options)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_directions * hidden_size, num_classes)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens: [B, T] token ids, padded after each sequence's end; lengths: [B], each in 1..T.

        Returns the logits [B, num_classes]. ``lengths`` may live on any device; on the CPU it costs no
        device synchronisation (packing needs the lengths on the host).
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tuple(tokens.shape)}")
        if lengths.shape != tokens.shape[:1]:
            raise ValueError(f"lengths must be [batch] = [{tokens.size(0)}], got shape {tuple(lengths.shape)}")
        embedded = self.embedding(tokens)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        # h_n is [layers * directions, B, H], in the caller's batch order; keep the last layer's
        # directions and put them side by side: [B, directions * H].
        last_layer = h_n.view(self.num_layers, self.num_directions, -1, self.hidden_size)[-1]
        features = last_layer.transpose(0, 1).reshape(tokens.size(0), self.num_directions * self.hidden_size)
        return self.classifier(self.dropout(features))
