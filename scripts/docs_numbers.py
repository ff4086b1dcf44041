"""Re-make the published files and re-measure the documents' marked numbers on them: `make publish`
(`make docs-numbers`: the numbers only, on the files as they are).

A marked block in a Markdown page is

    <!-- numbers: NAME -->
    ...what the command printed...
    <!-- /numbers -->

and its text is rendered from docs/numbers/NAME.json, which holds the command, the machine, the date, the
commit and what the command printed. `measure` runs the commands (a few minutes on 2 cores) and writes
those files; every run then renders every marked block from them. `tests/test_docs.py` renders them again
and fails when a page's block differs from its file (a number changed by hand), and sends the README's
curl lines to a real service and compares its answers with the page's.

    python scripts/docs_numbers.py [--only NAME ...] [--skip NAME ...]   # measure, then render
    python scripts/docs_numbers.py --render                              # render only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import describe_cpu  # noqa: E402

NUMBERS = ROOT / "docs" / "numbers"
PAGES = ("README.md", "docs/serving.md", "docs/loadtest.md", "docs/export.md", "docs/testing.md", "docs/runtimes.md")
BLOCK = re.compile(r"(<!-- numbers: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /numbers -->)", re.S)
CURLS = ("curl -s -XPOST 127.0.0.1:3000/classify -H 'Content-Type: application/json' -d @docs/examples/digit.json",
         "curl -s -XPOST 127.0.0.1:3000/classify_image -F image=@docs/examples/digit.png")


def machine() -> str:
    """The CPU (model, AVX2 / AVX-512 / VNNI / AMX, cores) and the ONNX Runtime build a figure was measured with."""
    import onnxruntime

    return (f"{describe_cpu()}, {platform.system()}, Python {platform.python_version()}, "
            f"ONNX Runtime {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")


def commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return run.stdout.strip() or "unknown"


def run(command: str, env: dict[str, str] | None = None) -> str:
    """A command's standard output (its standard error too when `2>&1` is asked for)."""
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=1800)
    if done.returncode not in (0, 1):  # the load test exits 1 when it misses its SLO: still its numbers
        raise RuntimeError(f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return done.stdout


def measure_examples() -> tuple[str, str]:
    """The README's two curl lines, sent to `make serve`'s service (the published model, int8 on the CPU)."""
    from loadtest.server import running_service

    with running_service(port=3000, env={"CAPSNET_DEVICE": "cpu"}):
        text = "".join(f"$ {curl}\n{run(curl).strip()}\n" for curl in CURLS)
    return "bentoml serve serving.service:CapsNet (what make serve runs) on 127.0.0.1:3000, then the two curl lines", text


def measure_export() -> tuple[str, str]:
    """The published files made again from the published weights (models/: what make serve, the Bentos and the
    images serve), with export's own report (PyTorch's exporter prints its progress on the same stream: left out).
    First, so that every later measurement is of these files."""
    command = ".venv/bin/python -m export --checkpoint models/capsnet-mnist.safetensors --out models/capsnet-mnist.onnx"
    return command, "".join(line for line in run(command).splitlines(keepends=True)
                            if not line.startswith("[torch.onnx]"))


def measure_int8_range() -> tuple[str, str]:
    """Each int8 recipe on this CPU's kernels and on the AVX2 kernels (docs/export.md)."""
    command = ".venv/bin/python scripts/int8_range.py"
    return command, run(command)


def measure_runtimes() -> tuple[str, str]:
    """The published files in OpenVINO and onnxruntime-node against ONNX Runtime (docs/runtimes.md)."""
    command = ".venv/bin/python scripts/runtimes.py"
    return command, run(command)


def measure_loadtest() -> tuple[str, str]:
    command = ".venv/bin/python -m loadtest --users 1 4 16 --duration 10 --out runs/docs-loadtest"
    return command, run(f"{command} 2>&1 | grep -v '^{{' | grep -v ' users for '")


def measure_pinned() -> tuple[str, str]:
    command = ".venv/bin/python -m loadtest.pinned --seconds 8 --rounds 2 --out runs/docs-pinned"
    out = run(command)
    return command, out[out.index("In-process ONNX Runtime"):]


def replicas_runs(runs: list[tuple[str, str]]) -> tuple[str, str]:
    """60 s Locust runs through HAProxy: (mode, --out folder) each."""
    commands = [f".venv/bin/python -m loadtest.replicas --mode {mode} --out runs/{out}" for mode, out in runs]
    texts = [run(command) for command in commands]
    return "; ".join(commands), "".join(f"$ {c}\n{t}" for c, t in zip(commands, texts))


def measure_replicas() -> tuple[str, str]:
    """A rolling restart (the README)."""
    return replicas_runs([("rolling", "docs-replicas-1")])


def measure_replicas_again() -> tuple[str, str]:
    """The rolling restart again (measured twice), and one replica SIGKILLed (docs/serving.md)."""
    return replicas_runs([("rolling", "docs-replicas-2"), ("kill", "docs-replicas-3")])


def measure_slowclients() -> tuple[str, str]:
    command = ".venv/bin/python -m loadtest.slowclients --out runs/docs-slowclients"
    return command, run(command)


# In the order they run: the export first (it re-makes the published files), then what is measured on them.
MEASURES: dict[str, Callable[[], tuple[str, str]]] = {
    "export": measure_export, "int8-range": measure_int8_range, "runtimes": measure_runtimes,
    "examples": measure_examples, "loadtest": measure_loadtest, "pinned": measure_pinned,
    "replicas": measure_replicas, "replicas-again": measure_replicas_again, "slowclients": measure_slowclients}


def render(name: str) -> str:
    """A block's text from docs/numbers/NAME.json."""
    record = json.loads((NUMBERS / f"{name}.json").read_text())
    return (f"Measured with `{record['command']}` on {record['machine']}, {record['date']}, commit {record['commit']}:\n\n"
            f"```\n{record['text'].rstrip()}\n```\n")


def rendered(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def stale_blocks(root: Path = ROOT) -> list[str]:
    """The marked blocks whose text is not what their record renders: each as 'page: name'."""
    found = []
    for page in PAGES:
        text = (root / page).read_text()
        for m in BLOCK.finditer(text):
            if m.group("body") != render(m.group("name")):
                found.append(f"{page}: {m.group('name')}")
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--render", action="store_true", help="only rewrite the blocks from docs/numbers/")
    p.add_argument("--only", nargs="+", choices=list(MEASURES), default=list(MEASURES),
                   help="the measurements to take (export: re-makes the published files in models/)")
    p.add_argument("--skip", nargs="+", choices=list(MEASURES), default=[], help="measurements not to take")
    args = p.parse_args(argv)
    if not args.render:
        NUMBERS.mkdir(parents=True, exist_ok=True)
        for name in [name for name in MEASURES if name in args.only and name not in args.skip]:
            started = time.perf_counter()
            print(f"docs-numbers: measuring {name} ...", file=sys.stderr, flush=True)
            command, text = MEASURES[name]()
            record = {"command": command, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
                      "commit": commit(), "text": text}
            (NUMBERS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"docs-numbers: {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    for page in PAGES:
        path = ROOT / page
        path.write_text(rendered(path.read_text()))
    print("docs-numbers: rendered " + ", ".join(PAGES), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
