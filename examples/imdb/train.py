"""Trains an LSTM sentiment classifier on IMDB movie reviews with lstm_ext's fused LSTM.

    python train.py                                  # downloads the dataset on first use
    python train.py --data-dir /path/to/aclImdb --lstm torch
    torchrun --nproc_per_node=4 train.py             # DistributedDataParallel, one process per GPU
    python train.py --embeddings glove.6B.100d.txt --embed-dim 100 --freeze-embeddings --unfreeze-after 2
    python train.py --init-from checkpoints/best.pt --data-dir /path/to/other/aclImdb --warmup-steps 100
    python train.py --out checkpoints --resume       # continue an interrupted run from checkpoints/last.pt
    python train.py --layer-norm --zoneout 0.1 --tensorboard runs/ln-zoneout   # lstm_ext's LSTM variants

Under torchrun every process trains on its own shard of each global batch (--batch-size reviews) and
DistributedDataParallel averages the gradients (nccl on GPUs, gloo on the CPU); metrics are summed over
the processes, and only rank 0 prints them and writes the checkpoints and the metrics file.

Two checkpoints are kept in --out: best.pt, the model of the best validation accuracy (what predict.py
and --init-from read), and last.pt, written after every epoch with everything --resume needs to carry on
where the run stopped: the model, the optimizer, the learning-rate schedule, the epoch, the random number
generators of every process and the best model so far.

The training curves (loss and validation accuracy per epoch) are drawn as a PNG next to --metrics-out
(metrics.json -> metrics.png; without --metrics-out, training_curves.png in --out), listed in the
metrics file, and with --tensorboard DIR also logged for TensorBoard when the tensorboard package is there.
"""

import argparse
import inspect
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

import lstm_ext
from lstm_ext.models import SentimentClassifier

from checkpoints import LSTM_VARIANT_OPTIONS, CheckpointError, build_model, load_checkpoint, save_atomically
from curves import TensorBoardLog, empty_history, plot_training_curves
from data import (LABEL_NAMES, PAD_ID, BucketBatchSampler, Vocabulary, default_cache_dir, download_imdb, load_imdb,
                  pad_batch, read_word_vectors, vector_coverage)

# With --init-from, the vocabulary and the architecture are the checkpoint's: these may not differ from it,
FROM_CHECKPOINT = ("embed_dim", "hidden_size", "layers", "bidirectional", "vocab_size", "min_freq", "forget_bias",
                   "layer_norm", "peephole")
# and these default to the checkpoint's but may be changed for the fine-tuning.
DEFAULTS_FROM_CHECKPOINT = ("max_len", "dropout", "lstm", "recurrent_dropout", "zoneout")
# With --resume the run's own options are used; only these may be given anew: they leave the arithmetic
# of the run as it was (--epochs only lets it run longer).
RESUMABLE_CHANGES = ("resume", "epochs", "data_dir", "cache_dir", "device", "workers", "log_interval", "out",
                     "metrics_out", "tensorboard")


def build_parser():
    parser = argparse.ArgumentParser(description="IMDB sentiment classification with lstm_ext",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", help="an aclImdb-layout folder (train|test/pos|neg/*.txt); "
                                           "default: download the dataset into --cache-dir")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()), help="where the download is kept")
    parser.add_argument("--epochs", type=int, default=5,
                        help="passes over the training reviews (with --resume: the run's total, to extend it)")
    parser.add_argument("--batch-size", type=int, default=64, help="reviews per batch in each process")
    parser.add_argument("--embed-dim", type=int, default=128, help="size of the token embeddings")
    parser.add_argument("--hidden-size", type=int, default=256, help="LSTM units per direction")
    parser.add_argument("--layers", type=int, default=2, help="stacked LSTM layers")
    parser.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                        help="read each review in both directions")
    parser.add_argument("--dropout", type=float, default=0.5, help="between LSTM layers and before the output")
    parser.add_argument("--lr", type=float, help="Adam learning rate; default: 1e-3, or 1e-4 with --init-from")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="raise the learning rate linearly from lr/N to lr over the first N steps")
    parser.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    parser.add_argument("--max-len", type=int, default=500, help="keep the last this many tokens of a review")
    parser.add_argument("--vocab-size", type=int, default=25_000, help="tokens in the vocabulary, 2 specials included")
    parser.add_argument("--min-freq", type=int, default=2, help="fewest occurrences for a token to be in it")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="training reviews held out for validation")
    parser.add_argument("--lstm", choices=["fused", "torch"], default="fused",
                        help="lstm_ext.LSTM, or torch.nn.LSTM for comparison")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="under torchrun, cuda means each process's own GPU (cuda:LOCAL_RANK)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the initial weights, the validation split and the batch order")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--log-interval", type=int, default=20, help="steps between progress bar updates")
    parser.add_argument("--out", default="checkpoints",
                        help="folder for the best checkpoint (best.pt) and the last one (last.pt)")
    parser.add_argument("--metrics-out", help="write the test metrics and the per-epoch history to this JSON file, "
                                              "and the training curves next to it (same name, .png)")
    parser.add_argument("--tensorboard", metavar="DIR",
                        help="also log the training curves for TensorBoard into DIR (needs the tensorboard package)")

    variants = parser.add_argument_group("LSTM variants (lstm_ext.LSTM only, --lstm fused; all off by default)")
    variants.add_argument("--recurrent-dropout", type=float, default=LSTM_VARIANT_OPTIONS["recurrent_dropout"],
                          metavar="P", help="in training, drop units of h_{t-1} on the recurrent input with "
                                            "probability P, one mask per sequence")
    variants.add_argument("--zoneout", type=float, default=LSTM_VARIANT_OPTIONS["zoneout"], metavar="P",
                          help="in training, each unit of c and h keeps its previous value with probability P, "
                               "drawn afresh every step (evaluation uses the expectation)")
    variants.add_argument("--layer-norm", action="store_true",
                          help="layer normalisation of the gates' two products and of the cell (more parameters)")
    variants.add_argument("--forget-bias", type=float, default=LSTM_VARIANT_OPTIONS["forget_bias"], metavar="F",
                          help="added to the forget gates' initial bias")
    variants.add_argument("--peephole", action="store_true",
                          help="peephole connections from the cell to the input, forget and output gates")

    pretrained = parser.add_argument_group("pretrained word vectors")
    pretrained.add_argument("--embeddings", metavar="PATH",
                            help="initialise the embeddings of the words it has from this GloVe text file "
                                 "(word v1 v2 ... a line; plain or .gz; the dimension must be --embed-dim)")
    pretrained.add_argument("--freeze-embeddings", action="store_true",
                            help="keep the pretrained vectors fixed (the other rows still train); without "
                                 "--embeddings, every row")
    pretrained.add_argument("--unfreeze-after", type=int, metavar="N",
                            help="freeze the embeddings for the first N epochs, train them from epoch N+1")

    fine_tuning = parser.add_argument_group("fine-tuning and resuming")
    fine_tuning.add_argument("--init-from", metavar="CHECKPOINT",
                             help="start from this trained model (a best.pt); its vocabulary and architecture "
                                  "are used, and the --data-dir reviews are read with that vocabulary")
    fine_tuning.add_argument("--freeze-lstm", action="store_true",
                             help="keep the embeddings and the LSTM fixed: train only the output layer")
    fine_tuning.add_argument("--resume", action="store_true",
                             help="continue the interrupted run whose last.pt is in --out, with its options")
    return parser


def parse_args(argv=None):
    """(parser, args, the options given on the command line, with their values)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Which options were given rather than left at their defaults: parse again into a namespace that
    # already has every attribute, set to a marker; argparse only fills in defaults for missing ones.
    unset = object()
    probe = parser.parse_args(argv, argparse.Namespace(**{name: unset for name in vars(args)}))
    given = {name: value for name, value in vars(probe).items() if value is not unset}
    if args.unfreeze_after is not None:
        args.freeze_embeddings = True
    if args.embeddings and args.init_from:
        parser.error("--embeddings and --init-from exclude each other: fine-tuning keeps the checkpoint's embeddings")
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 <= args.recurrent_dropout < 1:
        parser.error(f"--recurrent-dropout must be in [0, 1), got {args.recurrent_dropout}")
    if not 0 <= args.zoneout <= 1:
        parser.error(f"--zoneout must be in [0, 1], got {args.zoneout}")
    return parser, args, given


def option_text(name, value):
    """An option as written on the command line: --hidden-size 8, --no-bidirectional."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def saved_options(checkpoint, parser):
    """A checkpoint's options, with the defaults of those its train.py did not have yet (the LSTM variants,
    --tensorboard)."""
    return {**vars(parser.parse_args([])), **checkpoint["args"]}


def take_options_from(checkpoint, args, given, parser):
    """--init-from: the checkpoint's vocabulary and architecture options replace ours; a differing one is an error."""
    saved = saved_options(checkpoint, parser)
    conflicts = [f"{option_text(name, given[name])} (the checkpoint has {option_text(name, saved[name])})"
                 for name in FROM_CHECKPOINT if name in given and given[name] != saved[name]]
    if conflicts:
        parser.error(f"--init-from {args.init_from}: the vocabulary and the architecture come from the checkpoint, "
                     f"and these options conflict with it: {'; '.join(conflicts)}")
    for name in FROM_CHECKPOINT + tuple(name for name in DEFAULTS_FROM_CHECKPOINT if name not in given):
        setattr(args, name, saved[name])


def resumed_args(checkpoint, path, given, parser):
    """--resume: the interrupted run's options, with the few that may change taken from the command line."""
    saved = saved_options(checkpoint, parser)
    conflicts = [f"{option_text(name, value)} (the run has {option_text(name, saved.get(name))})"
                 for name, value in given.items() if name not in RESUMABLE_CHANGES and saved.get(name) != value]
    if conflicts:
        parser.error(f"--resume continues the run of {path} with its own options, and these differ from them: "
                     f"{'; '.join(conflicts)}. Only --{', --'.join(n.replace('_', '-') for n in RESUMABLE_CHANGES)} "
                     "may be given anew")
    return argparse.Namespace(**{**saved, **{name: given[name] for name in given if name in RESUMABLE_CHANGES}})


def lstm_variant_options(args):
    """The LSTM variant options that differ from their defaults: what the model passes to lstm_ext.LSTM.

    Options left at their defaults are not passed at all, so that a plain model is built exactly as before
    (and by an lstm_ext that has no variants).
    """
    return {name: getattr(args, name) for name, default in LSTM_VARIANT_OPTIONS.items()
            if getattr(args, name) != default}


def check_lstm_variants(args, parser, lstm_class=lstm_ext.LSTM):
    """Errors, before any data is read, for variant options the chosen LSTM cannot take."""
    options = lstm_variant_options(args)
    if not options:
        return
    if args.lstm != "fused":
        parser.error(f"{', '.join(option_text(name, value) for name, value in options.items())}: lstm_ext.LSTM's "
                     f"variants, which --lstm {args.lstm} (torch.nn.LSTM) does not have; use --lstm fused")
    accepted = inspect.signature(lstm_class).parameters
    missing = [option_text(name, value) for name, value in options.items() if name not in accepted]
    if missing:
        parser.error(f"{', '.join(missing)}: the installed lstm_ext ({lstm_ext.__version__}, "
                     f"{Path(lstm_ext.__file__).parent}) has no such LSTM option; it needs an lstm_ext built "
                     f"with the LSTM variants")


def curves_path(args):
    """Where the training curves go: beside the metrics file (its name, .png), else into --out."""
    return Path(args.metrics_out).with_suffix(".png") if args.metrics_out else Path(args.out) / "training_curves.png"


def setup_distributed(device_name):
    """(rank, world size, local rank, device); a process group when started by torchrun."""
    device = torch.device(device_name)
    if "RANK" not in os.environ:  # a plain `python train.py`
        return 0, 1, 0, device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), local_rank, device


def all_reduce_sum(tensor):
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def train_one_epoch(model, loader, optimizer, scheduler, args, epoch, device, world_size, show_progress):
    """Returns the mean training loss over all processes, the seconds taken and the reviews seen."""
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    reviews = 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=f"epoch {epoch}/{args.epochs}", unit="batch", disable=not show_progress)
    for step, (tokens, lengths, labels) in enumerate(progress, start=1):
        tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(model(tokens, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        scheduler.step()

        # Accumulated on the device and read every log_interval steps: .item() waits for the GPU.
        loss_sum += loss.detach() * labels.size(0)
        reviews += labels.size(0)
        if step % args.log_interval == 0 or step == len(loader):
            seconds = time.perf_counter() - start
            # Every process takes as many reviews per step, so this process's rate times the processes.
            progress.set_postfix(loss=f"{loss_sum.item() / reviews:.4f}",
                                 reviews_per_s=f"{reviews * world_size / seconds:.0f}")
    seconds = time.perf_counter() - start
    totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(reviews, dtype=torch.float64, device=device)]))
    return (totals[0] / totals[1]).item(), seconds, int(totals[1])


@torch.no_grad()
def evaluate(model, loader, device):
    """Accuracy, precision, recall and F1 (positive reviews as the positive class) over all processes.

    Takes the bare model, not the DDP wrapper: processes may hold different numbers of batches here,
    and the bare model runs no collective that would wait for the others.
    """
    model.eval()
    # counts[2 * label + prediction]: true negatives, false positives, false negatives, true positives.
    counts = torch.zeros(4, dtype=torch.int64, device=device)
    for tokens, lengths, labels in loader:
        labels = labels.to(device)
        predictions = model(tokens.to(device), lengths).argmax(dim=1)
        counts += torch.bincount(2 * labels + predictions, minlength=4)
    tn, fp, fn, tp = all_reduce_sum(counts).tolist()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / max(tp + tn + fp + fn, 1),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }


class FrozenRows:
    """Zeroes the gradient of some rows of an embedding while ``active``, so those rows keep their values.

    A gradient hook rather than requires_grad: the other rows (words without a pretrained vector) still
    learn, and the rows can be unfrozen mid-run, which DistributedDataParallel would not allow for a
    parameter's requires_grad. Adam moves a weight whose gradient has always been zero by exactly zero.
    """

    def __init__(self, embedding, rows):
        self.keep = (~rows).to(embedding.weight.device, embedding.weight.dtype).unsqueeze(1)
        self.active = True
        embedding.weight.register_hook(self.mask)

    def mask(self, grad):
        return grad * self.keep if self.active else grad


def linear_warmup(steps):
    """The learning-rate factor of each step (from 0): rising linearly from 1/steps to 1 over ``steps`` steps."""
    return lambda step: min(1.0, (step + 1) / steps) if steps > 0 else 1.0


def rng_state(device):
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))  # in case a loader gives the tuple back as a list
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_rng_states(device):
    """Every process's generator states, in rank order: the processes' dropout draws differ."""
    state = rng_state(device)
    if not dist.is_initialized():
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def cpu_copy(state_dict):
    return {name: value.detach().to("cpu", copy=True) for name, value in state_dict.items()}


def format_metrics(metrics):
    return ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())


def main(argv=None):
    parser, args, given = parse_args(argv)
    # The checkpoint that the model and its vocabulary come from, if any: last.pt, or --init-from's.
    resume_state = init_checkpoint = source_path = None
    if args.resume:
        source_path = Path(args.out) / "last.pt"
        resume_state = load_checkpoint(source_path, training_state=True)
        args = resumed_args(resume_state, source_path, given, parser)
    elif args.init_from:
        source_path = args.init_from
        init_checkpoint = load_checkpoint(source_path)
        take_options_from(init_checkpoint, args, given, parser)
    check_lstm_variants(args, parser)
    if args.lr is None:
        args.lr = 1e-4 if args.init_from else 1e-3  # fine-tuning: small steps, not to undo what was learned
    rank, world_size, local_rank, device = setup_distributed(args.device)
    is_main = rank == 0
    torch.manual_seed(args.seed)  # the same initial weights in every process

    data_dir = args.data_dir
    if data_dir is None:
        # One download per machine: the cache folder is the machine's, the other processes wait for it.
        if local_rank == 0:
            download_imdb(args.cache_dir)
        if dist.is_initialized():
            dist.barrier()
        data_dir = download_imdb(args.cache_dir)
    load_start = time.perf_counter()
    source = resume_state or init_checkpoint
    train_set, val_set, test_set, vocab = load_imdb(data_dir, args.vocab_size, args.min_freq, args.max_len,
                                                    args.val_fraction, args.seed,
                                                    vocab=Vocabulary(source["vocab"]) if source else None)
    if is_main:
        print(f"{len(train_set)} training, {len(val_set)} validation and {len(test_set)} test reviews, "
              f"vocabulary of {len(vocab)} tokens ({time.perf_counter() - load_start:.1f} s to read); "
              f"{world_size} process(es) on {device}, lstm={args.lstm}")

    train_sampler = BucketBatchSampler(train_set.lengths, args.batch_size, shuffle=True, seed=args.seed,
                                       drop_last=True)
    if len(train_sampler) == 0:
        raise ValueError(f"{len(train_set)} training reviews do not fill one batch of {args.batch_size} "
                         f"reviews in each of {world_size} process(es)")
    loader_options = {"collate_fn": pad_batch, "num_workers": args.workers, "pin_memory": device.type == "cuda"}
    train_loader = DataLoader(train_set, batch_sampler=train_sampler, **loader_options)
    val_loader, test_loader = (
        DataLoader(dataset, batch_sampler=BucketBatchSampler(dataset.lengths, args.batch_size, shuffle=False),
                   **loader_options)
        for dataset in (val_set, test_set))

    model_config = {"vocab_size": len(vocab), "embed_dim": args.embed_dim, "hidden_size": args.hidden_size,
                    "num_layers": args.layers, "bidirectional": args.bidirectional, "dropout": args.dropout,
                    "num_classes": len(LABEL_NAMES), "padding_idx": PAD_ID, "lstm": args.lstm,
                    **lstm_variant_options(args)}
    # The rows of the embedding that hold pretrained vectors (kept in last.pt, so --resume need not re-read them).
    pretrained_rows = torch.zeros(len(vocab), dtype=torch.bool)
    if source:
        model = build_model(source, source_path, lstm=args.lstm, dropout=args.dropout,
                            lstm_options=lstm_variant_options(args)).to(device)
        pretrained_rows = source.get("pretrained_rows", pretrained_rows)
    else:
        model = SentimentClassifier(**model_config).to(device)
        if args.embeddings:
            try:
                vectors, pretrained_rows = read_word_vectors(args.embeddings, vocab, dim=args.embed_dim,
                                                             progress=is_main)
            except (OSError, ValueError) as error:
                parser.error(f"--embeddings: {error}")
            with torch.no_grad():
                model.embedding.weight[pretrained_rows] = vectors[pretrained_rows].to(device)
            if is_main:
                words, vocab_words, tokens, total_tokens = vector_coverage(pretrained_rows, train_set.token_ids)
                print(f"pretrained vectors for {words} of {vocab_words} vocabulary words ({words / vocab_words:.1%}), "
                      f"covering {tokens} of {total_tokens} training tokens ({tokens / total_tokens:.1%})")

    if args.freeze_lstm:
        model.embedding.requires_grad_(False)
        model.lstm.requires_grad_(False)
    frozen_rows = None
    if args.freeze_embeddings and not args.freeze_lstm:  # (--freeze-lstm freezes every row already)
        # The pretrained rows; without pretrained vectors, every row (e.g. a checkpoint's trained embeddings).
        frozen_rows = FrozenRows(model.embedding, pretrained_rows if args.embeddings else
                                 torch.ones(len(vocab), dtype=torch.bool))
    trained = model  # what the training steps call: the model, or its DDP wrapper that syncs gradients
    if dist.is_initialized():
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Frozen parameters get no gradient, and Adam skips those: all of them can go to the optimizer.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup(args.warmup_steps))
    if is_main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{sum(p.numel() for p in model.parameters()):,} parameters, {trainable:,} of them trainable")

    start_epoch, before_fine_tuning, history = 1, None, empty_history()
    best = {"epoch": 0, "val_accuracy": -1.0, "model_state": None}
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer_state"])
        scheduler.load_state_dict(resume_state["scheduler_state"])
        start_epoch, best = resume_state["epoch"] + 1, resume_state["best"]
        before_fine_tuning = resume_state.get("before_fine_tuning")
        history = resume_state.get("history", history)
        # Last, so nothing above draws from the generators: the next epoch draws what it would have drawn.
        states = resume_state["rng_states"]
        if len(states) != world_size and is_main:
            print(f"note: the run had {len(states)} process(es), this one {world_size}: the random draws "
                  "(dropout) will differ from an uninterrupted run")
        set_rng_state(states[rank % len(states)], device)
        if is_main:
            print(f"resuming {source_path} after epoch {resume_state['epoch']} of {args.epochs}")
    elif init_checkpoint:
        before_fine_tuning = {"validation": evaluate(model, val_loader, device),
                              "test": evaluate(model, test_loader, device)}
        if is_main:
            print(f"before fine-tuning: validation accuracy {before_fine_tuning['validation']['accuracy']:.4f}; "
                  f"test: {format_metrics(before_fine_tuning['test'])}")

    out = Path(args.out)
    tensorboard = TensorBoardLog(args.tensorboard if is_main else None)
    for epoch in range(start_epoch, args.epochs + 1):
        train_sampler.set_epoch(epoch)
        if frozen_rows is not None:
            frozen_rows.active = args.unfreeze_after is None or epoch <= args.unfreeze_after
        train_loss, seconds, reviews = train_one_epoch(trained, train_loader, optimizer, scheduler, args, epoch,
                                                       device, world_size, show_progress=is_main)
        val_metrics = evaluate(model, val_loader, device)
        if is_main:
            print(f"epoch {epoch}/{args.epochs}: train loss {train_loss:.4f}, "
                  f"validation accuracy {val_metrics['accuracy']:.4f}, "
                  f"{seconds:.1f} s ({reviews / seconds:.0f} reviews/s)")
        for key, value in (("epoch", epoch), ("train_loss", train_loss), ("val_accuracy", val_metrics["accuracy"])):
            history[key].append(value)
        if is_main:
            tensorboard.log_epoch(epoch, train_loss, val_metrics["accuracy"])
        checkpoint = {"model_config": model_config, "model_state": cpu_copy(model.state_dict()),
                      "vocab": vocab.itos, "args": vars(args), "epoch": epoch,
                      "val_accuracy": val_metrics["accuracy"]}
        if val_metrics["accuracy"] > best["val_accuracy"]:
            # Every process keeps the best weights (they are the same everywhere) for the test below;
            # only rank 0 writes them.
            best = {"epoch": epoch, "val_accuracy": val_metrics["accuracy"], "model_state": checkpoint["model_state"]}
            if is_main:
                save_atomically(checkpoint, out / "best.pt")
                print(f"saved {out / 'best.pt'}")
        rng_states = gather_rng_states(device)  # a collective: every process takes part
        if is_main:
            # The best model goes in too: last.pt alone is enough to resume, whatever happened to best.pt.
            save_atomically({**checkpoint, "optimizer_state": optimizer.state_dict(),
                             "scheduler_state": scheduler.state_dict(), "rng_states": rng_states, "best": best,
                             "pretrained_rows": pretrained_rows, "before_fine_tuning": before_fine_tuning,
                             "history": history},
                            out / "last.pt")

    model.load_state_dict(best["model_state"])
    test_metrics = evaluate(model, test_loader, device)
    if is_main:
        print(f"test (best epoch, {best['epoch']}): {format_metrics(test_metrics)}")
        if before_fine_tuning:
            print(f"test before fine-tuning: {format_metrics(before_fine_tuning['test'])}")
        if args.metrics_out:
            metrics = dict(test_metrics, **({"before_fine_tuning": before_fine_tuning["test"]}
                                            if before_fine_tuning else {}), history=history)
            Path(args.metrics_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.metrics_out).write_text(json.dumps(metrics, indent=2) + "\n")
            print(f"wrote {args.metrics_out}")
        variants = "".join(f" {option_text(name, value)}" for name, value in lstm_variant_options(args).items())
        plot_training_curves(history, curves_path(args), f"IMDB sentiment classifier, lstm={args.lstm}{variants}")
        print(f"wrote {curves_path(args)}")
        tensorboard.log_test(best["epoch"], test_metrics)
        tensorboard.close()
    if dist.is_initialized():
        # All ranks tear down together: a rank that destroyed its gloo group while rank 0 was still
        # writing its files sometimes aborted at exit ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as error:  # a bad checkpoint file is for the user to fix: the message, no traceback
        sys.exit(f"error: {error}")
