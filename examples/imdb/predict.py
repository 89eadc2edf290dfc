"""Classifies movie reviews with a checkpoint written by train.py.

    python predict.py --checkpoint checkpoints/best.pt "A wonderful film." "Two hours I will not get back."
    cat reviews.txt | python predict.py --checkpoint checkpoints/best.pt      # one review per line

Prints one line per review: the label, its probability, and the review.
"""

import argparse
import sys

import torch
from torch.nn.utils.rnn import pad_sequence

from checkpoints import CheckpointError, build_model, load_checkpoint
from data import LABEL_NAMES, PAD_ID, Vocabulary, encode_text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Classify movie reviews as positive or negative",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("texts", nargs="*", help="reviews to classify; without any, one per line from stdin")
    parser.add_argument("--checkpoint", default="checkpoints/best.pt",
                        help="best.pt (or last.pt) written by train.py")
    parser.add_argument("--lstm", choices=["fused", "torch"],
                        help="LSTM to run the weights with (default: the one they were trained with)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


def load_classifier(path, device, lstm=None):
    """The model (in eval mode), its vocabulary and the max review length it was trained with.

    Raises CheckpointError, naming the file and the problem, for a file that is not such a checkpoint.
    """
    checkpoint = load_checkpoint(path)
    model = build_model(checkpoint, path, lstm=lstm)
    return model.to(device).eval(), Vocabulary(checkpoint["vocab"]), checkpoint["args"]["max_len"]


@torch.no_grad()
def classify(model, vocab, texts, max_len, device, batch_size=64):
    """(label name, probability of that label) for every text."""
    results = []
    for start in range(0, len(texts), batch_size):
        token_ids = [encode_text(text, vocab, max_len) for text in texts[start:start + batch_size]]
        tokens = pad_sequence(token_ids, batch_first=True, padding_value=PAD_ID).to(device)
        lengths = torch.tensor([len(ids) for ids in token_ids])
        probabilities, labels = model(tokens, lengths).softmax(dim=1).max(dim=1)
        results += [(LABEL_NAMES[label], probability) for label, probability in zip(labels.tolist(),
                                                                                      probabilities.tolist())]
    return results


def main(argv=None):
    args = parse_args(argv)
    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    model, vocab, max_len = load_classifier(args.checkpoint, args.device, args.lstm)
    for text, (label, probability) in zip(texts, classify(model, vocab, texts, max_len, args.device,
                                                          args.batch_size)):
        print(f"{label}\t{probability:.4f}\t{text}")


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:
        sys.exit(f"error: {error}")
