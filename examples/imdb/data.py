"""The Large Movie Review Dataset (IMDB): download, reading, tokenization, vocabulary, batching by length.

The dataset (Maas et al., ACL 2011) holds 25,000 training and 25,000 test reviews, half positive and
half negative, in the layout

    aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt      (train/unsup holds unlabeled reviews: not read)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from collections import Counter
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
# The SHA-256 of aclImdb_v1.tar.gz as published by dataset loaders that verify it (e.g. JuliaText's
# CorpusLoaders.jl, src/IMDB_DataDeps.jl). None skips the comparison and prints the archive's checksum.
IMDB_SHA256: str | None = "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe"

SPLIT_FOLDERS = ("neg", "pos")          # folder per label; the label id is the index: 0 negative, 1 positive
LABEL_NAMES = ("negative", "positive")
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1


# ----------------------------------------------------------------------------------------------- download

def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstm_ext" / "imdb"


def download_imdb(cache_dir: str | os.PathLike, url: str = IMDB_URL, sha256: str | None = IMDB_SHA256,
                  progress: bool = True) -> Path:
    """Returns the aclImdb folder in ``cache_dir``, downloading and extracting the archive on first use.

    The archive is downloaded to a ``.part`` file and renamed when complete, checked against ``sha256``
    (a mismatch removes it and raises), and extracted into a temporary folder that is renamed into
    place, so an interrupted run never leaves something that a later run would take for the dataset.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / "aclImdb"
    if root.is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / Path(urllib.parse.urlparse(url).path).name
    if not archive.is_file():
        _download(url, archive, progress)

    digest = file_sha256(archive)
    if sha256 is None:
        print(f"sha256 of {archive}: {digest} (no expected checksum to compare with)")
    elif digest != sha256:
        archive.unlink()
        raise RuntimeError(f"{archive} downloaded from {url} has sha256 {digest}, expected {sha256}; "
                           "the file was removed, run again to download it anew")
    _extract(archive, root)
    return root


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, destination: Path, progress: bool) -> None:
    partial = destination.with_name(destination.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
        size = response.headers.get("Content-Length")
        with tqdm(total=int(size) if size else None, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"downloading {destination.name}", disable=not progress) as bar:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                bar.update(len(chunk))
    partial.replace(destination)


def _extract(archive: Path, root: Path) -> None:
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=root.parent))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                # Refuses absolute paths, links out of the folder and device files.
                tar.extractall(staging, filter="data")
            else:  # Pythons before 3.10.12 / 3.11.4 have no filters; the checksum vouches for the archive
                tar.extractall(staging)
        extracted = staging / root.name
        if not extracted.is_dir():
            raise RuntimeError(f"{archive} does not contain a top-level {root.name}/ folder")
        extracted.replace(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------- reading, tokens

def read_split(root: str | os.PathLike, split: str) -> tuple[list[str], list[int]]:
    """The labeled reviews of ``split`` ("train" or "test") in file-name order, and their labels."""
    texts, labels = [], []
    for label, folder_name in enumerate(SPLIT_FOLDERS):
        folder = Path(root) / split / folder_name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist: the data folder must be in the aclImdb layout "
                                    "(train|test/pos|neg/*.txt)")
        for path in sorted(folder.glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return texts, labels


_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A word (letters, digits, inner apostrophes as in "don't") or a single punctuation character.
_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lower case, HTML line breaks removed, punctuation split from words: "Great!<br />" -> great, !"""
    return _TOKEN.findall(_LINE_BREAK.sub(" ", text.lower()))


class Vocabulary:
    """Token <-> id. Id 0 is padding and id 1 stands for every token outside the vocabulary."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r} and {UNK!r}, got {list(tokens[:2])}")
        self.itos = list(tokens)
        self.stoi = {token: index for index, token in enumerate(self.itos)}

    @classmethod
    def build(cls, tokenized_texts: Iterable[list[str]], max_size: int, min_freq: int = 1) -> "Vocabulary":
        """The ``max_size - 2`` most frequent tokens seen at least ``min_freq`` times, plus the two specials."""
        if max_size < 2:
            raise ValueError(f"max_size must leave room for {PAD!r} and {UNK!r}, got {max_size}")
        counts = Counter(chain.from_iterable(tokenized_texts))
        # Ties are broken by the token itself, so every run and every rank builds the same vocabulary.
        frequent = sorted((token for token, count in counts.items() if count >= min_freq),
                          key=lambda token: (-counts[token], token))
        return cls([PAD, UNK] + frequent[:max_size - 2])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.stoi.get(token, UNK_ID) for token in tokens]


def encode_tokens(tokens: list[str], vocab: Vocabulary, max_len: int) -> Tensor:
    """The ids of the last ``max_len`` tokens: a review's verdict tends to be at its end.

    No tokens give one unknown token, since a sequence needs at least one step.
    """
    ids = vocab.encode(tokens[-max_len:])
    return torch.tensor(ids or [UNK_ID], dtype=torch.long)


def encode_text(text: str, vocab: Vocabulary, max_len: int) -> Tensor:
    return encode_tokens(tokenize(text), vocab, max_len)


# -------------------------------------------------------------------------------------------- datasets

class ReviewDataset(Dataset):
    """Encoded reviews (1-D LongTensors of token ids) and their labels."""

    def __init__(self, token_ids: list[Tensor], labels: list[int]) -> None:
        assert len(token_ids) == len(labels)
        self.token_ids = token_ids
        self.labels = labels
        self.lengths = [len(ids) for ids in token_ids]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.token_ids[index], self.labels[index]


def pad_batch(examples: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Collates reviews into (tokens [B, T] padded with PAD_ID, lengths [B], labels [B])."""
    token_ids, labels = zip(*examples)
    lengths = torch.tensor([len(ids) for ids in token_ids])
    tokens = pad_sequence(list(token_ids), batch_first=True, padding_value=PAD_ID)
    return tokens, lengths, torch.tensor(labels)


def split_train_validation(size: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random split of range(size) into training and validation indices."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    num_val = min(max(round(size * val_fraction), 1), size - 1)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[num_val:]), sorted(order[:num_val])


def load_imdb(root: str | os.PathLike, vocab_size: int, min_freq: int, max_len: int, val_fraction: float,
              seed: int, vocab: Vocabulary | None = None
              ) -> tuple[ReviewDataset, ReviewDataset, ReviewDataset, Vocabulary]:
    """Training, validation and test datasets from an aclImdb folder, and the training vocabulary.

    The validation reviews are held out of the training split before the vocabulary is built, so the
    vocabulary has seen no more than the model has. A given ``vocab`` (a trained model's, when
    fine-tuning) is used instead of building one; ``vocab_size`` and ``min_freq`` then play no part.
    """
    texts, labels = read_split(root, "train")
    # Interned, the many repeats of a word share one string object: a tenth of the memory, in each process.
    tokenized = [[sys.intern(token) for token in tokenize(text)] for text in texts]
    train_indices, val_indices = split_train_validation(len(texts), val_fraction, seed)
    if vocab is None:
        vocab = Vocabulary.build((tokenized[i] for i in train_indices), vocab_size, min_freq)
    train, val = (ReviewDataset([encode_tokens(tokenized[i], vocab, max_len) for i in indices],
                                [labels[i] for i in indices])
                  for indices in (train_indices, val_indices))
    test_texts, test_labels = read_split(root, "test")
    test = ReviewDataset([encode_text(text, vocab, max_len) for text in test_texts], test_labels)
    return train, val, test, vocab


# ------------------------------------------------------------------------------ pretrained word vectors

def read_word_vectors(path: str | os.PathLike, vocab: Vocabulary, dim: int | None = None, progress: bool = True
                      ) -> tuple[Tensor, Tensor]:
    """The vectors of ``vocab``'s words from a GloVe text file (``word v1 v2 ...`` a line, plain or .gz).

    Returns (vectors [len(vocab), dim], found [len(vocab)] bool): rows of words without a vector are
    zero and not found; the two specials are never looked up. The file is streamed line by line, so a
    vectors file of gigabytes takes no more memory than the vocabulary's rows, and only the lines of
    vocabulary words are parsed. The dimension is the first line's, checked against ``dim`` when given
    (before reading on), and every line must have it. A first line of just two integers (the "count dim"
    header of word2vec and fastText .vec files) is skipped.
    """
    path = Path(path)
    wanted = {word: index for index, word in enumerate(vocab.itos) if index >= 2}
    expected_dim, dim = dim, None
    vectors, found = None, torch.zeros(len(vocab), dtype=torch.bool)
    with open(path, "rb") as raw, tqdm(total=os.fstat(raw.fileno()).st_size, unit="B", unit_scale=True,
                                       unit_divisor=1024, desc=f"reading {path.name}", disable=not progress) as bar:
        # Through a .gz the bar follows the compressed bytes read, which is what the file size counts.
        lines = gzip.open(raw) if path.name.endswith(".gz") else raw
        for line_number, line in enumerate(lines, start=1):
            if line_number % 10_000 == 0:
                bar.update(raw.tell() - bar.n)
            line = line.rstrip()
            if not line:
                continue
            if dim is None:
                fields = line.split(b" ")
                if len(fields) == 2 and all(field.isdigit() for field in fields):
                    continue
                dim = len(fields) - 1
                if dim < 1:
                    raise ValueError(f"{path}, line {line_number}: expected a word and its vector, got {line[:80]!r}")
                if expected_dim is not None and dim != expected_dim:
                    raise ValueError(f"{path} holds vectors of dimension {dim}, not {expected_dim}")
                vectors = torch.zeros(len(vocab), dim)
            fields = line.rsplit(b" ", dim)
            if len(fields) != dim + 1 or (b" " in fields[0] and _is_number(fields[0].rsplit(b" ", 1)[1])):
                raise ValueError(f"{path}, line {line_number}: expected a word and {dim} numbers (the first "
                                 f"line's dimension), got {len(line.split(b' ')) - 1} numbers")
            if b" " in fields[0]:
                continue  # a "word" with spaces (glove.840B has a few): never one of our tokens
            index = wanted.get(fields[0].decode("utf-8", errors="replace"))
            if index is not None and not found[index]:  # the first vector of a word repeated in the file wins
                try:
                    vectors[index] = torch.tensor([float(value) for value in fields[1:]])
                except ValueError as error:
                    raise ValueError(f"{path}, line {line_number}: {error}") from None
                found[index] = True
        bar.update(raw.tell() - bar.n)
    if vectors is None:
        raise ValueError(f"{path} holds no vectors")
    return vectors, found


def _is_number(field: bytes) -> bool:
    try:
        float(field)
        return True
    except ValueError:
        return False


def vector_coverage(found: Tensor, token_ids: Sequence[Tensor]) -> tuple[int, int, int, int]:
    """(vocabulary words with a vector, vocabulary words, tokens of ``token_ids`` with a vector, tokens).

    The two specials are not words; unknown tokens count as tokens without a vector, since that is what
    the model reads for them.
    """
    counts = torch.bincount(torch.cat(list(token_ids)), minlength=len(found))
    return int(found.sum()), len(found) - 2, int(counts[found].sum()), int(counts.sum())


# -------------------------------------------------------------------------------------------- batching

class BucketBatchSampler(Sampler[list[int]]):
    """Batches of reviews of similar length, each process of a distributed run reading its own shard.

    Like DistributedSampler, every process computes the same seeded order of the whole dataset and keeps
    its part; unlike it, the order is cut into global batches of ``batch_size * num_replicas`` reviews
    first, and process ``rank`` reads every ``num_replicas``-th review of each. So a step of N processes
    with batch size b covers exactly the reviews of a step of one process with batch size N*b, and a run
    does not change with the number of processes it is spread over.

    Within pools of ``pool_batches`` global batches the reviews are sorted by length, which keeps
    padding small, and the batches are then shuffled so lengths do not rise through an epoch.

    Args:
        lengths: the length of every review of the dataset.
        batch_size: reviews per batch in each process.
        shuffle: a new seeded order every epoch (call set_epoch); otherwise the dataset's order.
        drop_last: drop the last global batch when incomplete, so every process takes as many steps
            with as many reviews (needed in training: a process without a batch would stall the others).
        num_replicas, rank: the processes of the run and this one; default: from torch.distributed.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, num_replicas: int | None = None, rank: int | None = None,
                 pool_batches: int = 50) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (
            torch.distributed.get_world_size() if distributed else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.pool_batches = pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        size = len(self.lengths)
        order = torch.randperm(size, generator=generator).tolist() if self.shuffle else list(range(size))
        global_batch = self.batch_size * self.num_replicas
        pool_size = global_batch * self.pool_batches
        batches = []
        for start in range(0, size, pool_size):
            pool = sorted(order[start:start + pool_size], key=self.lengths.__getitem__)
            batches += [pool[i:i + global_batch] for i in range(0, len(pool), global_batch)]
        if self.drop_last and batches and len(batches[-1]) < global_batch:
            batches.pop()
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        for batch in batches:
            # Strided, so the processes' batches of a sorted global batch are alike in length.
            shard = batch[self.rank::self.num_replicas]
            if shard:
                yield shard

    def __len__(self) -> int:
        global_batch = self.batch_size * self.num_replicas
        full, rest = divmod(len(self.lengths), global_batch)
        return full + (0 if self.drop_last else int(rest > self.rank))
