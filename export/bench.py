"""python -m export.bench: inference throughput, PyTorch eager against ONNX Runtime, in one run.

Every engine runs the same weights on the same real MNIST test digits; each number is the median
of --repeats timed runs after a warm-up. On the CPU: PyTorch eager, ORT fp32 (all and basic graph
optimizations), the broadcast-routing graph, ORT int8. On CUDA: PyTorch eager TF32, ORT fp32 and
fp16 with IO binding (input and output stay on the GPU), the broadcast graph. Prints a table with
ratios to PyTorch eager and the targets' ratios, and writes runs/bench/bench.json and bench.png.

Then, on the CPU, what the routing outputs cost (--routing): the served variant's graph cut down to
/classify's outputs against the full graph asked for the same outputs (as the service does, and with ONNX
Runtime's only_execute_path_to_fetches, which skips the routing summary) and asked for everything, as /explain does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from export.broadcast import export_broadcast
from export.artifact import CLASSIFY_OUTPUTS, INPUT, OUTPUTS, variant_path
from training.checkpoint import load_weights
from mnist import DEFAULT_ROOT, read_split

CPU_BATCHES = (1, 8, 64, 256)
LENGTHS = OUTPUTS[0]  # the class scores: the output the GPU runs (IO binding) leave on the device
GPU_BATCHES = (1, 8, 64, 256, 1024, 4096)


def time_it(run: Callable[[], object], repeats: int, min_seconds: float = 0.2) -> float:
    """Median seconds of one call, each sample averaging enough calls to last min_seconds."""
    run()  # warm-up
    t0 = time.perf_counter()
    run()
    once = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


OPT_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}


def node_counts(path: Path) -> dict[str, int]:
    import collections

    import onnx

    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node).most_common())


def fetched_only() -> ort.RunOptions:
    """Run options under which ONNX Runtime computes only what the asked outputs need."""
    options = ort.RunOptions()
    options.only_execute_path_to_fetches = True
    return options


def ort_run(session: ort.InferenceSession, outputs: tuple[str, ...] = CLASSIFY_OUTPUTS,
            options: ort.RunOptions | None = None) -> Callable:
    """factory(batch) -> one plain session.run of that batch (numpy in, numpy out): by default /classify's run."""
    return lambda images: lambda: session.run(list(outputs), {INPUT: images}, options)


def ort_iobinding(session: ort.InferenceSession, device: str) -> Callable:
    """factory(batch) -> one run with the input already on `device` and the output left there."""
    def factory(images: np.ndarray) -> Callable:
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT, ort.OrtValue.ortvalue_from_numpy(images, device, 0))
        binding.bind_output(LENGTHS, device)

        def run() -> list[ort.OrtValue]:
            session.run_with_iobinding(binding)
            return binding.get_outputs()  # left on the device
        return run
    return factory


def engines(weights: Path, onnx_files: dict[str, tuple[Path, str]], device: str, threads: int
            ) -> dict[str, Callable]:
    """name -> factory(batch ndarray) -> zero-argument callable that runs one batch."""
    model, _ = load_weights(weights, device)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    found: dict[str, Callable] = {}

    def torch_engine(images: np.ndarray) -> Callable:
        x = torch.from_numpy(images).to(device)

        def run() -> None:
            with torch.no_grad():
                model(x)
            if device == "cuda":
                torch.cuda.synchronize()
        return run

    found["pytorch-eager" + ("-tf32" if device == "cuda" else "")] = torch_engine
    for name, (path, level) in onnx_files.items():
        if not path.exists():
            print(f"skipping {name}: {path} does not exist", file=sys.stderr)
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = OPT_LEVELS[level]
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), options, providers=providers)
        found[f"ort-{name}"] = ort_iobinding(session, device) if device == "cuda" else ort_run(session)
    return found


def onnx_files_for(fp32: Path, device: str) -> dict[str, tuple[Path, str]]:
    """The ONNX engines timed on this device: name -> (file, graph optimization level)."""
    if device == "cuda":
        return {"fp32": (fp32, "all"), "fp16": (variant_path(fp32, "fp16"), "all")}
    return {"fp32": (fp32, "all"), "fp32-optbasic": (fp32, "basic"), "int8": (variant_path(fp32, "int8"), "all")}


TARGETS = (  # (numerator engine, denominator engine, batch, target ratio): the benchmark issue's targets
    ("ort-fp32", "ort-fp32-broadcast", 64, 1.4),
    ("ort-int8", "ort-fp32", 64, 1.7),
    ("ort-fp16", "pytorch-eager-tf32", 1024, 1.5),
)


def plot(report: dict, path: Path) -> None:
    """Images/s against batch size, one line per engine, from a bench.json report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, row in report["images_per_s"].items():
        ax.plot([int(b) for b in row], list(row.values()), marker="o", label=name)
    batches = [int(b) for b in next(iter(report["images_per_s"].values()))]
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"CapsNet inference, {report['machine']['device']} ({report['machine']['cpus']} CPUs), "
                 f"{report['date']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


ROUNDS_PER_REPEAT = 8  # the routing comparison takes 8 x --repeats samples per run and batch (40 by default)


def routing_cost(onnx_path: Path, out: Path, digits: np.ndarray, batches: list[int], threads: int, rounds: int
                 ) -> dict[str, dict[str, float]]:
    """Images/s of /classify's and /explain's runs on one graph, against the graph without the routing outputs."""
    import onnx.utils

    cut = out / f"{onnx_path.stem}-classify-outputs.onnx"
    onnx.utils.extract_model(str(onnx_path), str(cut), [INPUT], list(CLASSIFY_OUTPUTS))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    full, classify_only = (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                           for path in (onnx_path, cut))
    runs = {"graph without routing outputs": ort_run(classify_only, CLASSIFY_OUTPUTS),
            "classify's outputs, fetched only": ort_run(full, CLASSIFY_OUTPUTS, fetched_only()),
            "classify's outputs, whole graph run (the service)": ort_run(full, CLASSIFY_OUTPUTS),
            "every output (/explain)": ort_run(full, OUTPUTS)}
    table: dict[str, dict[str, float]] = {name: {} for name in runs}
    for b in batches:  # the four interleaved, round after round, so that a drift of the machine hits all alike
        images = np.ascontiguousarray(np.resize(digits, (b, 1, 28, 28)))
        calls = {name: factory(images) for name, factory in runs.items()}
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, call in calls.items():
                samples[name].append(time_it(call, 1, min_seconds=0.05))
        for name in runs:
            table[name][str(b)] = round(b / statistics.median(samples[name]), 1)
    print(f"\nrouting outputs, {onnx_path.name} ({' '.join(f'b={b}' for b in batches)}; images/s, median of"
          f" {rounds} interleaved samples of 0.05 s or more; ratio to the first)")
    first = next(iter(table.values()))
    for name, row in table.items():
        print(f"{name:>48} " + " ".join(f"{v:>9.0f} ({v / first[b]:.3f}x)" for b, v in row.items()))
    cut.unlink()
    return table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weights", type=Path, default=Path("models/capsnet-mnist.safetensors"), help="PyTorch weights")
    p.add_argument("--onnx", type=Path, default=Path("models/capsnet-mnist.onnx"), help="fp32 ONNX of the same weights")
    p.add_argument("--broadcast", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the same weights exported with broadcast-multiply routing")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help=f"batch sizes (default: {CPU_BATCHES} on CPU, {GPU_BATCHES} on CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed samples per point (median reported)")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's choice)")
    p.add_argument("--routing", action=argparse.BooleanOptionalAction, default=True,
                   help="on the CPU, also time the routing outputs' cost on the int8 graph (batch 1 and 64)")
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json and bench.png")
    args = p.parse_args(argv)
    batches = args.batches or (GPU_BATCHES if args.device == "cuda" else CPU_BATCHES)
    digits = read_split("test", args.data, max(batches))[0][:, None]
    onnx_files = onnx_files_for(args.onnx, args.device)
    if args.broadcast:
        args.out.mkdir(parents=True, exist_ok=True)
        broadcast = export_broadcast(load_weights(args.weights)[0], args.out / "capsnet-broadcast.onnx")
        onnx_files["fp32-broadcast"] = (broadcast, "all")
    table: dict[str, dict[int, float]] = {}
    for name, factory in engines(args.weights, onnx_files, args.device, args.threads).items():
        table[name] = {}
        for b in batches:
            images = np.ascontiguousarray(np.resize(digits, (b, 1, 28, 28)))
            seconds = time_it(factory(images), args.repeats)
            table[name][b] = b / seconds
            print(f"{name:>22} batch {b:>5}: {b / seconds:>10.1f} images/s  {1000 * seconds:8.2f} ms/batch",
                  file=sys.stderr)
    base = next(iter(table))
    print(f"\n{'engine':>22} " + " ".join(f"{'b=' + str(b):>16}" for b in batches))
    for name, row in table.items():
        print(f"{name:>22} " + " ".join(f"{row[b]:>9.0f} ({row[b] / table[base][b]:.2f}x)" for b in batches))
    ratios = {}
    for top, bottom, batch, target in TARGETS:
        if top in table and bottom in table and batch in batches:
            ratios[f"{top}/{bottom}@{batch}"] = ratio = round(table[top][batch] / table[bottom][batch], 3)
            print(f"{top} / {bottom} at batch {batch}: {ratio:.2f}x (target {target}x)")
    routing = {}
    if args.routing and args.device == "cpu" and variant_path(args.onnx, "int8").exists():
        args.out.mkdir(parents=True, exist_ok=True)
        routing = routing_cost(variant_path(args.onnx, "int8"), args.out, digits, [1, 64], args.threads,
                               ROUNDS_PER_REPEAT * args.repeats)
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "threads": args.threads,
        "images_per_s": {name: {str(b): round(v, 1) for b, v in row.items()} for name, row in table.items()},
        "ratio_to": base, "target_ratios": ratios, "routing_outputs_int8_images_per_s": routing,
        "onnx_node_counts": {name: node_counts(path) for name, (path, _) in onnx_files.items() if path.exists()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "bench.png")
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
