"""Train CapsNet on MNIST: `python -m training --help`.

The whole data set lives on the training device as one tensor; shuffling and the 2-pixel shifts
happen there too, seeded per epoch, so a resumed run continues exactly where it stopped.
Under torchrun (WORLD_SIZE > 1) the same loop runs data-parallel with DDP.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from training.baseline import BaselineCNN, BaselineConfig, cross_entropy
from training.checkpoint import load_state, load_weights, save_state, save_weights
from training.data import DEFAULT_ROOT, MNIST_SIZE, centre, load_split, random_shift
from training.model import CapsNet, CapsNetConfig, count_parameters, margin_loss, reconstruction_loss
from timing import describe_cpu

VAL_SPLIT_SEED = 12345  # the held-out validation images are the same for every training seed
WEIGHTS = "checkpoint.safetensors"  # evaluation weights (EMA when enabled) + .json sidecar
STATE = "train-state.pt"  # raw weights, optimizer, EMA: what --resume needs
METRICS = "metrics.jsonl"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def split_train_val(x: torch.Tensor, y: torch.Tensor, n_val: int):
    if n_val <= 0:
        return (x, y), None
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(VAL_SPLIT_SEED))
    val, train = order[:n_val], order[n_val:]
    return (x[train], y[train]), (x[val], y[val])


def build_model(arch: str, routing_iters: int, image_size: int = MNIST_SIZE) -> CapsNet | BaselineCNN:
    if arch == "cnn":
        return BaselineCNN(BaselineConfig(image_size=image_size))
    return CapsNet(replace(CapsNetConfig(), routing_iters=routing_iters, image_size=image_size))


def scores(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class scores: capsule lengths for CapsNet, logits for the CNN baseline."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def training_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, capsnet: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, class scores): margin + reconstruction for CapsNet (decoder masked by the label)."""
    if capsnet:
        lengths, _, recon = model(images, labels)
        return margin_loss(lengths.float(), labels) + reconstruction_loss(recon.float(), images), lengths
    logits = model(images)
    return cross_entropy(logits.float(), labels), logits


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500,
             autocast: torch.autocast | None = None) -> float:
    """Top-1 accuracy of model on (x, y), by the longest capsule."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        with autocast or contextlib.nullcontext():
            predicted = scores(model, xb).argmax(1)
        correct += (predicted == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(len(x), 1)


def make_autocast(device: torch.device, precision: str) -> torch.autocast | None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return None


def train_epoch(model, step_model, optimizer, x, y, epoch, args, device, dist_info, autocast, ema,
                warmup: int = 0) -> dict:
    """One pass over the (sharded) training set; returns mean loss and accuracy.

    warmup > 0 ramps the learning rate linearly over the first `warmup` steps (a fresh optimizer
    started from trained weights, see --init); the epoch's own rate holds from then on.
    """
    model.train()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    gen = torch.Generator(device=device).manual_seed(args.seed * 100_003 + epoch)
    order = torch.randperm(len(x), device=device, generator=gen)
    per_rank = args.batch_size // dist_info.world
    drop_last = args.drop_last or dist_info.world > 1
    steps = len(x) // args.batch_size if drop_last else math.ceil(len(x) / args.batch_size)
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), device=device)
    seen = 0
    bar = tqdm(range(steps), desc=f"epoch {epoch}", disable=not dist_info.main or args.quiet,
               leave=False, dynamic_ncols=True)
    for step in bar:
        idx = order[step * args.batch_size:(step + 1) * args.batch_size]
        images = random_shift(x[idx], args.shift, generator=gen)  # the global batch: same shifts at any world size
        mine = slice(dist_info.rank * per_rank, (dist_info.rank + 1) * per_rank)
        idx, images = idx[mine], images[mine]
        labels = y[idx]
        if warmup:
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * min(1.0, (step + 1) / warmup)
        with autocast or contextlib.nullcontext():
            loss, predicted = training_loss(step_model, images, labels, isinstance(model, CapsNet))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        total_loss += loss.detach() * len(idx)
        total_correct += (predicted.argmax(1) == labels).sum()
        seen += len(idx)
        if step % 20 == 0 and not args.quiet:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}", acc=f"{total_correct.item() / seen:.4f}")
    stats = torch.stack([total_loss, total_correct, torch.tensor(float(seen), device=device)])
    if dist_info.world > 1:
        dist.all_reduce(stats)
    return {"train_loss": (stats[0] / stats[2]).item(), "train_acc": (stats[1] / stats[2]).item()}


class Ema:
    """Exponential moving average of the weights: ema = decay * ema + (1 - decay) * w."""

    def __init__(self, model: CapsNet | BaselineCNN, decay: float):
        self.decay = decay
        self.model = type(model)(model.cfg).to(next(model.parameters()).device)
        self.model.load_state_dict(model.state_dict())
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1.0 - self.decay)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", choices=["capsnet", "cnn"], default="capsnet",
                   help="model: CapsNet, or the conventional CNN baseline")
    p.add_argument("--epochs", type=int, default=10, help="epochs to train (in all, with --resume)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--lr-decay", type=float, default=0.9, help="learning rate factor per epoch")
    p.add_argument("--routing-iters", type=int, default=3, help="routing iterations")
    p.add_argument("--shift", type=int, default=2, help="max random shift in pixels (training only)")
    p.add_argument("--canvas", type=int, default=MNIST_SIZE,
                   help="image size: every digit centred on a canvas this big (40 with --shift 6: the paper's affNIST"
                        " setup, a digit anywhere on 40x40); the model is built for it")
    p.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and shifts")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="tf32",
                   help="matmul precision on CUDA (tf32/bf16 autocast); CPU always computes fp32 unless bf16")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights (0: off); EMA weights are evaluated and saved")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick mode)")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--val", type=int, default=0, help="hold out N training images for validation (fixed split)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after the epoch that passes this wall time")
    p.add_argument("--drop-last", action="store_true", help="drop the last partial batch of each epoch")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (checkpoint, metrics)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last epoch")
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (.safetensors): raw and EMA weights both from them, the epoch"
                        " count and learning rate continuing after their epoch, a fresh Adam (see --warmup-steps);"
                        " a run state found by --resume takes precedence")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="with --init: ramp the learning rate linearly over the first N steps of the fresh Adam")
    p.add_argument("--no-test", action="store_true",
                   help="do not score the test set during training (select by --val; measure the test set once, after)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def init_from_weights(model: torch.nn.Module, scheduler, path: Path, device: torch.device
                      ) -> tuple[int, dict]:
    """Load trained weights into model and move the schedule past their epoch; returns (next epoch, origin)."""
    trained, info = load_weights(path, device)
    if type(trained) is not type(model) or trained.cfg != model.cfg:
        raise SystemExit(f"--init {path}: a {info.get('arch')} with config {info.get('config')},"
                         f" not the model this run builds")
    model.load_state_dict(trained.state_dict())
    done = int(info.get("epoch", 0))
    with warnings.catch_warnings():  # stepping the schedule before any optimizer step is the point here
        warnings.simplefilter("ignore")
        for _ in range(done):
            scheduler.step()
    return done + 1, {"weights": str(path), "sha256": info.get("sha256"), "epoch": done}


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=world)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dist_info = init_distributed(device)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if args.batch_size % dist_info.world:
        raise SystemExit(f"--batch-size {args.batch_size} is not divisible by {dist_info.world} processes")
    torch.manual_seed(args.seed)
    autocast = make_autocast(device, args.precision)

    (x, y), val = split_train_val(*load_split("train", args.data), args.val)
    x, y = centre(x[:args.limit], args.canvas).to(device), y[:args.limit].to(device)
    x_test, y_test = load_split("test", args.data, 0 if args.no_test else args.test_limit)
    x_test, y_test = centre(x_test, args.canvas).to(device), y_test.to(device)
    if val is not None:
        val = (centre(val[0], args.canvas).to(device), val[1].to(device))  # once, not every epoch

    model = build_model(args.arch, args.routing_iters, args.canvas).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    out: Path = args.out
    resuming = args.resume and (out / STATE).exists()
    start_epoch, warmup, init_info = 1, 0, None
    if args.init is not None and not resuming:
        start_epoch, init_info = init_from_weights(model, scheduler, args.init, device)
        warmup = args.warmup_steps
    ema = Ema(model, args.ema) if args.ema > 0 else None
    if resuming:
        state = load_state(out / STATE, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.model.load_state_dict(state["ema"])
        start_epoch = state["epoch"] + 1
        init_info = state.get("init")
        if dist_info.main:
            print(f"resuming {out} after epoch {state['epoch']}", file=sys.stderr)
    elif dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS).unlink(missing_ok=True)

    step_model = model
    if dist_info.world > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(model)
    if args.compile:
        step_model = torch.compile(step_model)
    eval_model = ema.model if ema is not None else model

    if dist_info.main:
        print(f"{args.arch} {count_parameters(model):,} parameters; {len(x):,} training images on {device}"
              f" x{dist_info.world}; {len(x_test):,} test images", file=sys.stderr)
    started = time.time()
    record: dict = {}
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.time()
        stats = train_epoch(model, step_model, optimizer, x, y, epoch, args, device, dist_info, autocast, ema,
                            warmup=warmup if epoch == start_epoch else 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.time() - t0
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        record = {"epoch": epoch, **stats, "lr": lr, "epoch_seconds": round(seconds, 3),
                  "train_images_per_s": round(len(x) / seconds, 1),
                  **({} if args.no_test else {"test_acc": accuracy(eval_model, x_test, y_test, autocast=autocast)})}
        if dist_info.world > 1:  # every rank must hold the same weights
            checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
            sums = [torch.zeros_like(checksum) for _ in range(dist_info.world)]
            dist.all_gather(sums, checksum)
            record["rank_param_sums"] = [s.item() for s in sums]
        if val is not None:
            record["val_acc"] = accuracy(eval_model, *val, autocast=autocast)
        if dist_info.main:
            print(json.dumps(record), file=sys.stderr)
            with open(out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            save_weights(out / WEIGHTS, eval_model, {
                "epoch": epoch, "metrics": record, "seed": args.seed,
                "command": "python -m training " + shlex.join(argv if argv is not None else sys.argv[1:]),
                "train_images": len(x), "world_size": dist_info.world,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "torch": torch.__version__, "cpu": describe_cpu(),
                **({"init": init_info} if init_info else {}),
            })
            save_state(out / STATE, {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), **({"ema": ema.model.state_dict()} if ema else {}),
                **({"init": init_info} if init_info else {}),
            })
        if args.max_minutes is not None and time.time() - started > 60 * args.max_minutes:
            break
    if dist_info.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return record


if __name__ == "__main__":
    main()
