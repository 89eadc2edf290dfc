"""examples/imdb: the data pipeline, the download (from local files only), train.py end to end, a
two-process torchrun run against one process, predict.py, the training curves (PNG, TensorBoard) and
the LSTM variant flags; all on small data made here in the aclImdb layout."""

import http.server
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy
import pytest
import torch
from PIL import Image

from lstm_ext.models import SentimentClassifier

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO / "examples" / "imdb"
sys.path.insert(0, str(EXAMPLE_DIR))
import checkpoints as imdb_checkpoints  # noqa: E402  (the example's modules import each other by their plain names)
import data as imdb_data  # noqa: E402
import synthetic  # noqa: E402
import train as imdb_train  # noqa: E402

SUBPROCESS_TIMEOUT = 180  # seconds; a hung process group fails the test instead of the whole run
TINY_MODEL = ["--embed-dim", "8", "--hidden-size", "8", "--layers", "1", "--device", "cpu", "--log-interval", "1"]
METRIC_KEYS = {"accuracy", "precision", "recall", "f1"}
HISTORY_KEYS = ["epoch", "train_loss", "val_accuracy"]


def run_example(command, cwd, stdin=None, python_path=()):
    """Runs a command of the example (a script of examples/imdb, or torchrun) and returns its stdout.

    python_path: folders searched before the repository and the caller's PYTHONPATH."""
    # One thread: the models here are tiny, and threads spinning against other busy processes on a small
    # machine slow a run down tenfold. (torchrun sets the same for its workers.)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [*map(str, python_path), str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def train(data_dir, out_dir, *options, processes=None, python_path=()):
    script = str(EXAMPLE_DIR / "train.py")
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                script] if processes else [sys.executable, script])
    command += ["--data-dir", str(data_dir), "--out", str(out_dir), "--metrics-out", str(out_dir / "metrics.json"),
                *options]
    return run_example(command, cwd=out_dir.parent, python_path=python_path)


def load_checkpoint(out_dir):
    # weights_only: the checkpoint holds tensors and plain values only, safe to load from anywhere.
    return torch.load(out_dir / "best.pt", map_location="cpu", weights_only=True)


def write_reviews(root, reviews):
    """reviews: {relative path: text}, written under root."""
    for relative_path, text in reviews.items():
        path = root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------- text and loading

def test_tokenize_lowercases_drops_line_breaks_and_splits_punctuation():
    assert imdb_data.tokenize("A GREAT film!<br /><br />Don't miss it... 10/10<BR>") == [
        "a", "great", "film", "!", "don't", "miss", "it", ".", ".", ".", "10", "/", "10"]
    assert imdb_data.tokenize("") == []


def test_read_split_reads_labels_in_file_order_and_ignores_unsup(tmp_path):
    root = write_reviews(tmp_path / "aclImdb", {
        "train/pos/10_9.txt": "pos ten", "train/pos/2_7.txt": "pos two", "train/neg/0_1.txt": "neg zero",
        "train/unsup/0_0.txt": "unlabeled", "train/urls_unsup.txt": "http://x", "train/labeledBow.feat": "0:1",
        "test/pos/0_10.txt": "test pos", "test/neg/0_2.txt": "test neg", "imdb.vocab": "pos\nneg\n",
    })
    texts, labels = imdb_data.read_split(root, "train")
    assert texts == ["neg zero", "pos ten", "pos two"]  # neg (label 0) first, each folder by file name
    assert labels == [0, 1, 1]
    assert imdb_data.read_split(root, "test") == (["test neg", "test pos"], [0, 1])
    (root / "test" / "neg" / "0_2.txt").unlink()
    (root / "test" / "neg").rmdir()
    with pytest.raises(FileNotFoundError, match="aclImdb layout"):
        imdb_data.read_split(root, "test")


def test_vocabulary_keeps_the_most_frequent_tokens_seen_often_enough():
    texts = [["b", "a", "c", "a"], ["b", "d", "a"], ["c", "e", "e"]]  # a:3, b:2, c:2, e:2, d:1
    vocab = imdb_data.Vocabulary.build(texts, max_size=5, min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "a", "b", "c"]  # ties broken by the token: b, c before e
    assert vocab.encode(["c", "d", "a", "zebra"]) == [4, imdb_data.UNK_ID, 2, imdb_data.UNK_ID]
    assert imdb_data.Vocabulary.build(texts, max_size=100, min_freq=2).itos[2:] == ["a", "b", "c", "e"]
    assert imdb_data.Vocabulary.build(texts, max_size=100, min_freq=1).itos[-1] == "d"
    assert imdb_data.Vocabulary(vocab.itos).stoi == vocab.stoi
    with pytest.raises(ValueError, match="starts with"):
        imdb_data.Vocabulary(["a", "<pad>", "<unk>"])


def test_validation_split_is_seeded_disjoint_and_complete():
    train, val = imdb_data.split_train_validation(50, 0.2, seed=3)
    assert len(val) == 10 and sorted(train + val) == list(range(50))
    assert imdb_data.split_train_validation(50, 0.2, seed=3) == (train, val)
    assert imdb_data.split_train_validation(50, 0.2, seed=4) != (train, val)
    with pytest.raises(ValueError):
        imdb_data.split_train_validation(50, 0.0, seed=3)


def test_load_imdb_vocabulary_from_training_reviews_only_and_lengths_keep_the_end(tmp_path):
    # Training review i holds the word w<i>; test reviews hold a word of their own and long texts.
    size, val_fraction, seed, max_len = 10, 0.2, 5, 6
    reviews = {f"train/{'neg' if i < 5 else 'pos'}/{i}_5.txt": f"w{i} w{i} common!" for i in range(size)}
    reviews |= {"test/neg/0_1.txt": "testonly " * 3 + "common w0 w0 w0 w0 w0 , end", "test/pos/0_9.txt": "",
                "train/unsup/0_0.txt": "unsupword " * 20}
    root = write_reviews(tmp_path / "aclImdb", reviews)
    train_set, val_set, test_set, vocab = imdb_data.load_imdb(root, vocab_size=100, min_freq=1, max_len=max_len,
                                                              val_fraction=val_fraction, seed=seed)
    train_indices, val_indices = imdb_data.split_train_validation(size, val_fraction, seed)
    assert (len(train_set), len(val_set), len(test_set)) == (8, 2, 2)
    assert set(vocab.itos) == {"<pad>", "<unk>", "common", "!"} | {f"w{i}" for i in train_indices}
    assert train_set.labels == [int(i >= 5) for i in train_indices] and val_set.labels == [int(i >= 5)
                                                                                           for i in val_indices]
    assert train_set.lengths == [4] * 8
    # The long test review keeps its last max_len tokens; the empty one becomes a single unknown token.
    assert test_set.labels == [0, 1] and test_set.lengths == [max_len, 1]
    assert test_set[0][0].tolist() == vocab.encode(["w0", "w0", "w0", "w0", ",", "end"])
    assert test_set[1][0].tolist() == [imdb_data.UNK_ID]


def test_pad_batch_pads_after_each_review():
    tokens, lengths, labels = imdb_data.pad_batch([(torch.tensor([5, 6]), 1), (torch.tensor([7, 8, 9]), 0)])
    assert tokens.tolist() == [[5, 6, imdb_data.PAD_ID], [7, 8, 9]]
    assert lengths.tolist() == [2, 3] and labels.tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------- batching

LENGTHS = torch.randint(1, 200, (103,), generator=torch.Generator().manual_seed(0)).tolist()


def batches(epoch=0, **options):
    sampler = imdb_data.BucketBatchSampler(LENGTHS, **{"batch_size": 8, "shuffle": True, "seed": 1, **options})
    sampler.set_epoch(epoch)
    result = list(sampler)
    assert len(result) == len(sampler)
    return result


def test_bucket_batches_cover_every_review_once_with_similar_lengths():
    epoch_batches = batches(pool_batches=100)  # one pool: the batches are slices of the length order
    assert sorted(i for batch in epoch_batches for i in batch) == list(range(len(LENGTHS)))
    assert sorted(len(batch) for batch in epoch_batches) == [len(LENGTHS) % 8] + [8] * (len(LENGTHS) // 8)
    length_ranges = sorted((min(LENGTHS[i] for i in b), max(LENGTHS[i] for i in b)) for b in epoch_batches)
    assert all(high <= next_low for (_, high), (next_low, _) in zip(length_ranges, length_ranges[1:]))
    lengths_in_order = [[LENGTHS[i] for i in batch] for batch in epoch_batches]
    assert lengths_in_order != sorted(lengths_in_order)  # shuffled batches, not shortest to longest


def test_bucket_batches_are_seeded_per_epoch():
    assert batches(epoch=1) == batches(epoch=1)
    assert batches(epoch=1) != batches(epoch=2)
    assert batches(epoch=1, shuffle=False) == batches(epoch=2, shuffle=False)
    assert [len(batch) for batch in batches(drop_last=True)] == [8] * (len(LENGTHS) // 8)


@pytest.mark.parametrize("drop_last", [True, False])
def test_processes_read_shards_of_the_single_process_batches(drop_last):
    """Two processes with batch size b read, step by step, the reviews of one process with batch 2b."""
    for epoch in (0, 1):
        single = batches(epoch, batch_size=8, drop_last=drop_last)
        shards = [batches(epoch, batch_size=4, num_replicas=2, rank=rank, drop_last=drop_last) for rank in (0, 1)]
        assert len(shards[0]) == len(single)
        if drop_last:
            assert len(shards[1]) == len(single) and all(len(b) == 4 for shard in shards for b in shard)
        for step, global_batch in enumerate(single):
            parts = [shard[step] for shard in shards if step < len(shard)]
            assert sorted(i for part in parts for i in part) == sorted(global_batch)


# ---------------------------------------------------------------------------------------------- download

def make_archive(tmp_path):
    synthetic.write_dataset(tmp_path / "source" / "aclImdb", train_size=6, test_size=4)
    archive = tmp_path / "served" / "aclImdb_v1.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / "aclImdb", arcname="aclImdb")
    return archive, imdb_data.file_sha256(archive)


def test_download_checks_the_checksum_extracts_and_then_uses_the_cache(tmp_path):
    archive, sha256 = make_archive(tmp_path)
    cache = tmp_path / "cache"
    root = imdb_data.download_imdb(cache, url=archive.as_uri(), sha256=sha256, progress=False)
    assert root == cache / "aclImdb"
    texts, labels = imdb_data.read_split(root, "train")
    assert labels == [0, 0, 0, 1, 1, 1] and texts == imdb_data.read_split(tmp_path / "source" / "aclImdb", "train")[0]
    assert (cache / "aclImdb_v1.tar.gz").is_file() and not list(cache.glob("*.part")) + list(cache.glob(".extr*"))

    archive.unlink()  # a second call must not go to the network
    assert imdb_data.download_imdb(cache, url=archive.as_uri(), sha256=sha256, progress=False) == root


def test_download_rejects_a_wrong_checksum_and_leaves_nothing_behind(tmp_path):
    archive, sha256 = make_archive(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=f"has sha256 {sha256}, expected 0+"):
        imdb_data.download_imdb(cache, url=archive.as_uri(), sha256="0" * 64, progress=False)
    assert list(cache.iterdir()) == []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_over_http_with_a_progress_bar_and_no_known_checksum(tmp_path, capsys):
    archive, sha256 = make_archive(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(archive.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{archive.name}"
        root = imdb_data.download_imdb(tmp_path / "cache", url=url, sha256=None, progress=True)
    finally:
        server.shutdown()
        server.server_close()
    assert imdb_data.read_split(root, "test")[1] == [0, 0, 1, 1]
    captured = capsys.readouterr()
    assert f"sha256 of {tmp_path / 'cache' / archive.name}: {sha256}" in captured.out
    assert "downloading aclImdb_v1.tar.gz" in captured.err and "100%" in captured.err


def test_the_default_source_is_the_stanford_archive():
    assert imdb_data.IMDB_URL == "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
    assert imdb_data.IMDB_SHA256 is None or re.fullmatch(r"[0-9a-f]{64}", imdb_data.IMDB_SHA256)


# ------------------------------------------------------------------------------------- train and predict

@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return synthetic.write_dataset(tmp_path_factory.mktemp("small") / "aclImdb", train_size=80, test_size=41)


@pytest.mark.parametrize("lstm", ["fused", "torch"])
def test_train_runs_one_short_epoch_and_writes_a_checkpoint_and_metrics(tmp_path, small_data, lstm):
    out = tmp_path / "run"
    stdout = train(small_data, out, *TINY_MODEL, "--epochs", "1", "--batch-size", "16", "--lstm", lstm)
    assert "epoch 1/1: train loss" in stdout and "test (best epoch, 1): accuracy" in stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS | {"history"} and all(0 <= metrics[key] <= 1 for key in METRIC_KEYS)
    assert metrics["history"]["epoch"] == [1]
    checkpoint = load_checkpoint(out)
    assert checkpoint["epoch"] == 1 and checkpoint["args"]["lstm"] == lstm and checkpoint["args"]["hidden_size"] == 8
    assert checkpoint["vocab"][:2] == ["<pad>", "<unk>"] and checkpoint["model_config"]["vocab_size"] == len(
        checkpoint["vocab"])
    for implementation in ("fused", "torch"):  # the weights load into either LSTM
        model = SentimentClassifier(**dict(checkpoint["model_config"], lstm=implementation))
        model.load_state_dict(checkpoint["model_state"])


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """train.py with the fused LSTM on synthetic reviews whose label is in a few sentiment words."""
    data_dir = synthetic.write_dataset(tmp_path_factory.mktemp("learnable") / "aclImdb", train_size=600,
                                       test_size=300)
    out = tmp_path_factory.mktemp("learned") / "run"
    stdout = train(data_dir, out, "--embed-dim", "16", "--hidden-size", "16", "--layers", "1", "--dropout", "0",
                   "--epochs", "8", "--batch-size", "16", "--lr", "0.01", "--device", "cpu")
    return out, stdout


def test_train_learns_a_learnable_signal(learned_run):
    out, stdout = learned_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, stdout
    assert metrics["f1"] >= 0.9, stdout


def test_predict_classifies_texts_from_the_command_line_and_stdin(learned_run):
    out, _ = learned_run
    texts = ["A wonderful, brilliant film. I loved it!", "Boring. <br />A terrible waste of time, awful acting.",
             "Superb cast and an excellent story."]
    predict = [sys.executable, str(EXAMPLE_DIR / "predict.py"), "--checkpoint", str(out / "best.pt"), "--device", "cpu"]

    def parse(stdout):
        lines = [line.split("\t") for line in stdout.splitlines()]
        assert [text for _, _, text in lines] == texts
        return [(label, float(probability)) for label, probability, _ in lines]

    from_arguments = parse(run_example(predict + texts, cwd=out))
    assert [label for label, _ in from_arguments] == ["positive", "negative", "positive"]
    assert all(0.5 <= probability <= 1 for _, probability in from_arguments)
    # From stdin, with the weights run on nn.LSTM instead: the same labels and probabilities.
    from_stdin = parse(run_example(predict + ["--lstm", "torch"], cwd=out, stdin="\n".join(texts) + "\n\n"))
    assert [label for label, _ in from_stdin] == [label for label, _ in from_arguments]
    for (_, fused), (_, torch_lstm) in zip(from_arguments, from_stdin):
        assert fused == pytest.approx(torch_lstm, abs=2e-4)


def test_two_torchrun_processes_train_like_one_process_on_the_same_global_batches(tmp_path, small_data):
    """gloo on the CPU: 2 processes x batch 4 take the steps of 1 process x batch 8 (dropout off)."""
    options = [*TINY_MODEL, "--layers", "2", "--dropout", "0", "--epochs", "1", "--lr", "0.01", "--seed", "3"]
    two = tmp_path / "two-processes"
    two_stdout = train(small_data, two, *options, "--batch-size", "4", processes=2)
    one = tmp_path / "one-process"
    train(small_data, one, *options, "--batch-size", "8")

    assert "2 process(es) on cpu" in two_stdout
    # Rank 0 only: one test line, and the metrics file and the curves written once each.
    assert two_stdout.count("wrote ") == 2 and two_stdout.count("test (best epoch") == 1
    assert two_stdout.count(f"wrote {two / 'metrics.png'}") == 1
    assert sorted(path.name for path in two.iterdir()) == ["best.pt", "last.pt", "metrics.json", "metrics.png"]
    two_checkpoint, one_checkpoint = load_checkpoint(two), load_checkpoint(one)
    torch.manual_seed(3)
    initial = SentimentClassifier(**one_checkpoint["model_config"]).state_dict()
    for name, value in one_checkpoint["model_state"].items():
        assert (value - initial[name]).abs().max() > 1e-3, f"{name} did not train"
        torch.testing.assert_close(two_checkpoint["model_state"][name], value, msg=name)
    # The test set (41 reviews) splits unevenly over the processes; the summed counts must still agree.
    two_metrics = json.loads((two / "metrics.json").read_text())
    one_metrics = json.loads((one / "metrics.json").read_text())
    two_history, one_history = two_metrics.pop("history"), one_metrics.pop("history")
    assert two_metrics == pytest.approx(one_metrics)
    # The epoch's loss is averaged over both processes' reviews: the single process's.
    assert two_history["epoch"] == one_history["epoch"] == [1]
    for key in ("train_loss", "val_accuracy"):
        assert two_history[key] == pytest.approx(one_history[key]), key


# ------------------------------------------------------------------------------------ training curves

TAB_BLUE, TAB_GREEN = (31, 119, 180), (44, 160, 44)  # the loss and the accuracy lines' colours (curves.py)
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: train loss ([0-9.]+), validation accuracy ([0-9.]+)")


@pytest.fixture(scope="module")
def curves_run(tmp_path_factory, small_data):
    """Three epochs with --tensorboard (whether or not tensorboard is installed here)."""
    out = tmp_path_factory.mktemp("curves") / "run"
    stdout = train(small_data, out, *TINY_MODEL, "--epochs", "3", "--batch-size", "16", "--lr", "0.01",
                   "--tensorboard", str(out.parent / "tensorboard"))
    return out, stdout


def test_metrics_hold_each_epochs_loss_and_validation_accuracy(curves_run):
    out, stdout = curves_run
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert list(history) == HISTORY_KEYS and history["epoch"] == [1, 2, 3]
    printed = [(int(epoch), float(loss), float(accuracy)) for epoch, loss, accuracy in EPOCH_LINE.findall(stdout)]
    assert [epoch for epoch, _, _ in printed] == history["epoch"]
    for (_, loss, accuracy), logged_loss, logged_accuracy in zip(printed, history["train_loss"],
                                                                 history["val_accuracy"]):
        assert logged_loss == pytest.approx(loss, abs=5e-5) and logged_accuracy == pytest.approx(accuracy, abs=5e-5)
    assert history["train_loss"][-1] < history["train_loss"][0]  # it trained (lr 0.01 on a learnable signal)


def test_the_curves_png_is_drawn_from_the_history(curves_run):
    out, stdout = curves_run
    path = out / "metrics.png"  # beside metrics.json, its name
    assert f"wrote {path}" in stdout
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()  # the chunks' checksums and structure
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (900, 360)
        history = json.loads((out / "metrics.json").read_text())["history"]
        assert json.loads(image.text["Description"]) == history
        pixels = numpy.asarray(image.convert("RGB"))
        colours = {colour: int((pixels == colour).all(axis=-1).sum()) for colour in (TAB_BLUE, TAB_GREEN)}
    # Both curves are drawn: the markers of three epochs are solid discs of the lines' colours.
    assert colours[TAB_BLUE] > 3 * 20 and colours[TAB_GREEN] > 3 * 20, colours


def test_the_curves_go_into_out_without_a_metrics_file(tmp_path, small_data):
    out = tmp_path / "run"
    command = [sys.executable, str(EXAMPLE_DIR / "train.py"), "--data-dir", str(small_data), "--out", str(out),
               *TINY_MODEL, "--epochs", "1", "--batch-size", "16"]
    stdout = run_example(command, cwd=tmp_path)
    assert f"wrote {out / 'training_curves.png'}" in stdout
    with Image.open(out / "training_curves.png") as image:
        assert json.loads(image.text["Description"])["epoch"] == [1]


def test_the_history_carries_over_a_resumed_run(tmp_path, small_data):
    out = tmp_path / "run"
    options = [*TINY_MODEL, "--epochs", "1", "--batch-size", "16"]
    train(small_data, out, *options)
    first = json.loads((out / "metrics.json").read_text())["history"]
    train(small_data, out, "--resume", "--epochs", "2")
    resumed = json.loads((out / "metrics.json").read_text())["history"]
    assert resumed["epoch"] == [1, 2]
    assert {key: values[:1] for key, values in resumed.items()} == first


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="the tensorboard package is not installed: torch.utils.tensorboard cannot write logs")
def test_tensorboard_logs_each_epoch_and_the_test_metrics(curves_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, stdout = curves_run
    log_dir = out.parent / "tensorboard"
    assert f"wrote TensorBoard logs to {log_dir}" in stdout
    events = EventAccumulator(str(log_dir))
    events.Reload()
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    for tag, values in (("train/loss", history["train_loss"]), ("validation/accuracy", history["val_accuracy"])):
        scalars = events.Scalars(tag)
        assert [scalar.step for scalar in scalars] == history["epoch"]
        assert [scalar.value for scalar in scalars] == pytest.approx(values, rel=1e-6)
    best_epoch = load_checkpoint(out)["epoch"]
    for name in METRIC_KEYS:
        (scalar,) = events.Scalars(f"test/{name}")
        assert scalar.step == best_epoch and scalar.value == pytest.approx(metrics[name], rel=1e-6)


def test_tensorboard_missing_is_said_and_training_goes_on(tmp_path, small_data):
    # A tensorboard package that fails to import, as torch.utils.tensorboard sees a missing one.
    blocker = tmp_path / "no-tensorboard" / "tensorboard"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named tensorboard (blocked by the test)')\n")
    out = tmp_path / "run"
    log_dir = tmp_path / "tensorboard"
    stdout = train(small_data, out, *TINY_MODEL, "--epochs", "1", "--batch-size", "16", "--tensorboard",
                   str(log_dir), python_path=[blocker.parent])
    assert (f"note: --tensorboard {log_dir}: not logging, the tensorboard package is not installed "
            "(pip install tensorboard)") in stdout
    assert "test (best epoch, 1)" in stdout and (out / "metrics.png").is_file() and not log_dir.exists()


# --------------------------------------------------------------------------------------- LSTM variants

VARIANT_FLAGS = ["--recurrent-dropout", "0.2", "--zoneout", "0.1", "--layer-norm", "--peephole", "--forget-bias", "1.0"]
VARIANT_OPTIONS = {"recurrent_dropout": 0.2, "zoneout": 0.1, "layer_norm": True, "peephole": True, "forget_bias": 1.0}


def parse_train_args(*argv):
    return imdb_train.parse_args(["--data-dir", "unused", *argv])


def test_variant_flags_parse_into_the_lstm_options_and_defaults_pass_none():
    _, args, _ = parse_train_args(*VARIANT_FLAGS)
    assert imdb_train.lstm_variant_options(args) == VARIANT_OPTIONS
    _, args, _ = parse_train_args()
    assert imdb_train.lstm_variant_options(args) == {}  # a plain model: lstm_ext.LSTM gets no new arguments
    _, args, _ = parse_train_args("--zoneout", "0.1")
    assert imdb_train.lstm_variant_options(args) == {"zoneout": 0.1}


@pytest.mark.parametrize("flag, value, message", [
    ("--recurrent-dropout", "1", r"--recurrent-dropout must be in \[0, 1\), got 1.0"),
    ("--zoneout", "-0.1", r"--zoneout must be in \[0, 1\], got -0.1")])
def test_variant_rates_out_of_range_are_refused(capsys, flag, value, message):
    with pytest.raises(SystemExit):
        parse_train_args(flag, value)
    assert re.search(message, capsys.readouterr().err)


def test_variant_flags_with_the_torch_lstm_are_refused_before_any_data_is_read(capsys):
    with pytest.raises(SystemExit):
        imdb_train.main(["--data-dir", "/nonexistent", "--lstm", "torch", "--layer-norm", "--zoneout", "0.1"])
    assert ("--zoneout 0.1, --layer-norm: lstm_ext.LSTM's variants, which --lstm torch (torch.nn.LSTM) does not "
            "have; use --lstm fused") in capsys.readouterr().err


def test_variant_flags_an_lstm_without_them_cannot_take_fail_with_a_clear_error(capsys):
    parser, args, _ = parse_train_args("--layer-norm", "--forget-bias", "1.0")
    with pytest.raises(SystemExit):
        # torch.nn.LSTM stands in for an lstm_ext.LSTM built before the variants: it has none of them.
        imdb_train.check_lstm_variants(args, parser, lstm_class=torch.nn.LSTM)
    error = capsys.readouterr().err
    assert "--forget-bias 1.0, --layer-norm: the installed lstm_ext" in error and "has no such LSTM option" in error


def test_variant_flags_reach_the_lstm_of_the_saved_model(tmp_path, small_data):
    out = tmp_path / "run"
    # lr 0: the saved weights are the initial ones, so the forget-gate bias shows --forget-bias.
    train(small_data, out, *TINY_MODEL, *VARIANT_FLAGS, "--epochs", "1", "--batch-size", "16", "--lr", "0")
    checkpoint = load_checkpoint(out)
    assert {name: checkpoint["model_config"][name] for name in VARIANT_OPTIONS} == VARIANT_OPTIONS
    assert {name: checkpoint["args"][name] for name in VARIANT_OPTIONS} == VARIANT_OPTIONS
    model = SentimentClassifier(**checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])  # strict: the variants' parameters are all there
    assert {name: getattr(model.lstm, name) for name in VARIANT_OPTIONS} == VARIANT_OPTIONS
    state = checkpoint["model_state"]
    assert {"lstm.weight_peephole_l0", "lstm.layer_norm_weight_ih_l0", "lstm.layer_norm_bias_c_l0"} <= set(state)
    hidden, bound = 8, 1 / math.sqrt(8)
    forget_bias = state["lstm.bias_ih_l0"][hidden:2 * hidden]
    others = torch.cat([state["lstm.bias_ih_l0"][:hidden], state["lstm.bias_ih_l0"][2 * hidden:]])
    assert forget_bias.sub(1.0).abs().max() <= bound and others.abs().max() <= bound
    # The same weights on torch.nn.LSTM would compute something else: refused with a clear error.
    with pytest.raises(imdb_checkpoints.CheckpointError, match="torch.nn.LSTM does not have"):
        imdb_checkpoints.build_model(checkpoint, out / "best.pt", lstm="torch")

    # Fine-tuning keeps the architecture and may change the regularisation.
    tuned = tmp_path / "tuned"
    train(small_data, tuned, "--init-from", str(out / "best.pt"), "--zoneout", "0.3", "--recurrent-dropout", "0",
          "--epochs", "1", "--batch-size", "16", "--device", "cpu")
    tuned_config = load_checkpoint(tuned)["model_config"]
    assert {name: tuned_config.get(name) for name in VARIANT_OPTIONS} == dict(
        VARIANT_OPTIONS, zoneout=0.3, recurrent_dropout=None)


def test_the_classifier_passes_lstm_options_to_lstm_ext_only():
    with pytest.raises(ValueError, match=r"lstm='torch' \(torch.nn.LSTM\) takes none of lstm_ext.LSTM's options, "
                                         r"got layer_norm=True, zoneout=0.1"):
        SentimentClassifier(10, 4, 4, lstm="torch", layer_norm=True, zoneout=0.1)
    model = SentimentClassifier(10, 4, 4, lstm="fused", layer_norm=True, zoneout=0.1)
    assert model.lstm.layer_norm is True and model.lstm.zoneout == 0.1
    assert "layer_norm_weight_c_l0" in dict(model.lstm.named_parameters())
