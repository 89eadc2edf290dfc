"""Trains an LSTM sentiment classifier on IMDB movie reviews with lstm_ext's fused LSTM.

    python train.py                                  # downloads the dataset on first use
    python train.py --data-dir /path/to/aclImdb --lstm torch
    torchrun --nproc_per_node=4 train.py             # DistributedDataParallel, one process per GPU

Under torchrun every process trains on its own shard of each global batch (--batch-size reviews) and
DistributedDataParallel averages the gradients (nccl on GPUs, gloo on the CPU); metrics are summed over
the processes, and only rank 0 prints them and writes the checkpoint and the metrics file.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from lstm_ext.models import SentimentClassifier

from data import (LABEL_NAMES, PAD_ID, BucketBatchSampler, default_cache_dir, download_imdb, load_imdb,
                  pad_batch)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="IMDB sentiment classification with lstm_ext",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", help="an aclImdb-layout folder (train|test/pos|neg/*.txt); "
                                           "default: download the dataset into --cache-dir")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()), help="where the download is kept")
    parser.add_argument("--epochs", type=int, default=5, help="passes over the training reviews")
    parser.add_argument("--batch-size", type=int, default=64, help="reviews per batch in each process")
    parser.add_argument("--embed-dim", type=int, default=128, help="size of the token embeddings")
    parser.add_argument("--hidden-size", type=int, default=256, help="LSTM units per direction")
    parser.add_argument("--layers", type=int, default=2, help="stacked LSTM layers")
    parser.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                        help="read each review in both directions")
    parser.add_argument("--dropout", type=float, default=0.5, help="between LSTM layers and before the output")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
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
    parser.add_argument("--out", default="checkpoints", help="folder for the best checkpoint (best.pt)")
    parser.add_argument("--metrics-out", help="write the test metrics to this JSON file")
    return parser.parse_args(argv)


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


def train_one_epoch(model, loader, optimizer, args, epoch, device, world_size, show_progress):
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


def save_atomically(obj, path):
    """torch.save through a temporary file, so an interrupted save never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(obj, temporary)
    temporary.replace(path)


def main(argv=None):
    args = parse_args(argv)
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
    train_set, val_set, test_set, vocab = load_imdb(data_dir, args.vocab_size, args.min_freq, args.max_len,
                                                    args.val_fraction, args.seed)
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
                    "num_classes": len(LABEL_NAMES), "padding_idx": PAD_ID, "lstm": args.lstm}
    model = SentimentClassifier(**model_config).to(device)
    trained = model  # what the training steps call: the model, or its DDP wrapper that syncs gradients
    if dist.is_initialized():
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    if is_main:
        print(f"{sum(p.numel() for p in model.parameters()):,} parameters")

    checkpoint_path = Path(args.out) / "best.pt"
    best_accuracy, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, args.epochs + 1):
        train_sampler.set_epoch(epoch)
        train_loss, seconds, reviews = train_one_epoch(trained, train_loader, optimizer, args, epoch, device,
                                                       world_size, show_progress=is_main)
        val_metrics = evaluate(model, val_loader, device)
        if is_main:
            print(f"epoch {epoch}/{args.epochs}: train loss {train_loss:.4f}, "
                  f"validation accuracy {val_metrics['accuracy']:.4f}, "
                  f"{seconds:.1f} s ({reviews / seconds:.0f} reviews/s)")
        if val_metrics["accuracy"] > best_accuracy:
            # Every process keeps the best weights (they are the same everywhere) for the test below;
            # only rank 0 writes them.
            best_accuracy, best_epoch = val_metrics["accuracy"], epoch
            best_state = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
            if is_main:
                save_atomically({"model_config": model_config, "model_state": best_state, "vocab": vocab.itos,
                                 "args": vars(args), "epoch": epoch, "val_accuracy": best_accuracy},
                                checkpoint_path)
                print(f"saved {checkpoint_path}")

    model.load_state_dict(best_state)
    test_metrics = evaluate(model, test_loader, device)
    if is_main:
        print(f"test (best epoch, {best_epoch}): " + ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))
        if args.metrics_out:
            Path(args.metrics_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.metrics_out).write_text(json.dumps(test_metrics, indent=2) + "\n")
            print(f"wrote {args.metrics_out}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
