"""Writes a small synthetic dataset in the aclImdb layout, with a sentiment signal an LSTM can learn.

    python synthetic.py /tmp/synthetic-imdb --train 2000 --test 2000
    python train.py --data-dir /tmp/synthetic-imdb

Each review is neutral filler with a few sentiment words of its label's polarity at random places, in
the look of the real reviews (capitals, punctuation, <br /> line breaks, <id>_<rating>.txt names, an
unlabeled train/unsup folder and the top-level files). It checks that the pipeline trains end to end in
seconds on a CPU; it says nothing about accuracy on the real reviews.
"""

import argparse
import random
from pathlib import Path

POSITIVE_WORDS = ["great", "wonderful", "excellent", "superb", "brilliant", "delightful", "masterpiece", "loved"]
NEGATIVE_WORDS = ["awful", "boring", "terrible", "dull", "mess", "waste", "painful", "hated"]
FILLER_WORDS = ["the", "movie", "film", "plot", "actor", "actress", "scene", "story", "it", "was", "and", "a",
                "of", "director", "character", "ending", "music", "camera", "script", "i", "this", "that",
                "with", "cast", "watched", "time", "two", "hours", "some", "people", "say", "not", "sure"]
PUNCTUATION = [".", ",", "!", "?", "...", " <br /><br />"]


def synthetic_review(positive: bool, rng: random.Random, min_words: int = 8, max_words: int = 60,
                     max_sentiment_words: int = 3) -> str:
    words = [rng.choice(FILLER_WORDS) for _ in range(rng.randint(min_words, max_words))]
    sentiment_words = POSITIVE_WORDS if positive else NEGATIVE_WORDS
    for _ in range(rng.randint(1, max_sentiment_words)):
        words.insert(rng.randrange(len(words) + 1), rng.choice(sentiment_words))
    text = ""
    for index, word in enumerate(words):
        text += (" " if text else "") + (word.capitalize() if index == 0 or rng.random() < 0.05 else word)
        if rng.random() < 0.1:
            text += rng.choice(PUNCTUATION)
    return text + "."


def write_dataset(root: str | Path, train_size: int, test_size: int, seed: int = 0, unsup_size: int = 10,
                  **review_options) -> Path:
    """Writes root/aclImdb-style folders (root itself is the aclImdb folder) and returns root.

    Each split has ``size // 2`` positive and ``size - size // 2`` negative reviews.
    """
    rng = random.Random(seed)
    root = Path(root)
    for split, size in (("train", train_size), ("test", test_size)):
        for folder in ("pos", "neg"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for index in range(size):
            positive = index < size // 2
            rating = rng.randint(7, 10) if positive else rng.randint(1, 4)
            path = root / split / ("pos" if positive else "neg") / f"{index}_{rating}.txt"
            path.write_text(synthetic_review(positive, rng, **review_options), encoding="utf-8")
        (root / split / "urls_pos.txt").write_text("http://www.imdb.com/title/tt0000000/usercomments\n")
        (root / split / "labeledBow.feat").write_text("0:1 1:2\n")
    # Unlabeled reviews with a sentiment word each: they must never reach the labeled splits.
    (root / "train" / "unsup").mkdir(exist_ok=True)
    for index in range(unsup_size):
        (root / "train" / "unsup" / f"{index}_0.txt").write_text(synthetic_review(index % 2 == 0, rng),
                                                                 encoding="utf-8")
    (root / "imdb.vocab").write_text("\n".join(FILLER_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS) + "\n")
    (root / "README").write_text("Synthetic reviews in the layout of the Large Movie Review Dataset v1.0.\n")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out", help="folder to write (it becomes the aclImdb-layout --data-dir)")
    parser.add_argument("--train", type=int, default=2000, help="training reviews")
    parser.add_argument("--test", type=int, default=2000, help="test reviews")
    parser.add_argument("--max-words", type=int, default=60, help="longest review, in words before insertions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = write_dataset(args.out, args.train, args.test, seed=args.seed, max_words=args.max_words)
    print(f"wrote {args.train} training and {args.test} test reviews to {root}")


if __name__ == "__main__":
    main()
