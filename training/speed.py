"""Training speed on this machine: `python -m training.speed --help`.

Times the same CapsNet training step (batch 128, margin + reconstruction loss, Adam) in each form,
in one run on the same digits, and prints images/s and the ratio to eager fp32. A form that
changes the arithmetic (bf16) also prints how far its loss moved from fp32's on the first batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from mnist import DEFAULT_ROOT
from training.data import load_split
from training.model import CapsNet, margin_loss, reconstruction_loss

FORMS = ("eager", "channels-last", "bf16-autocast", "compile")


def time_form(form: str, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int, batch: int) -> dict:
    torch.manual_seed(0)
    model = CapsNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    if form == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if form == "compile" else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if form == "bf16-autocast" else contextlib.nullcontext()

    def step(i: int) -> float:
        images, labels = x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]
        if form == "channels-last":
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast:
            lengths, _, recon = step_model(images, labels)
        loss = margin_loss(lengths.float(), labels) + reconstruction_loss(recon.float(), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    first_loss = step(0)
    for i in range(1, warmup):
        step(i)
    started = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    seconds = time.perf_counter() - started
    return {"images_per_s": round(steps * batch / seconds, 1), "first_loss": first_loss}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.speed", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS), help="forms to time")
    p.add_argument("--steps", type=int, default=6, help="timed steps per form")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--data", default=DEFAULT_ROOT, help="MNIST root folder")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = load_split("train", args.data, (args.steps + args.warmup) * args.batch_size)
    results = {form: time_form(form, x, y, args.steps, args.warmup, args.batch_size) for form in args.forms}
    base = results.get("eager")
    print(f"{'form':>14} {'images/s':>9} {'vs eager':>9} {'first-batch loss':>17}  ({torch.get_num_threads()} threads)")
    for form, r in results.items():
        ratio = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if base else "-"
        print(f"{form:>14} {r['images_per_s']:>9.1f} {ratio:>9} {r['first_loss']:>17.6f}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
