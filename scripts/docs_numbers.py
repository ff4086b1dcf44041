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
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import describe_cpu  # noqa: E402

NUMBERS = ROOT / "docs" / "numbers"
PAGES = ("README.md", "BENCHMARKS.md", "docs/training.md", "docs/serving.md", "docs/loadtest.md", "docs/export.md", "docs/testing.md", "docs/runtimes.md", "docs/containers.md",
         "models/README.md")
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


def run(command: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 1800) -> str:
    """A command's standard output (its standard error too when `2>&1` is asked for)."""
    done = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    if done.returncode not in (0, 1) or not done.stdout.strip():  # the load test exits 1 when it misses its SLO:
        raise RuntimeError(f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}")  # still its numbers
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


def measure_training() -> tuple[str, str]:
    """`make train`'s quick CPU model (one epoch of 30,000 digits), timed from outside (docs/training.md)."""
    command = "/usr/bin/time -v .venv/bin/python -m training --epochs 1 --limit 30000 --out runs/docs-train --quiet"
    return command, kept(command, lambda line: line.startswith(("capsnet ", '{"epoch"')) or "Elapsed (wall" in line)


def measure_int8_range() -> tuple[str, str]:
    """Each int8 recipe on this CPU's kernels and on the AVX2 kernels (docs/export.md)."""
    command = ".venv/bin/python scripts/int8_range.py"
    return command, run(command)


def measure_int8_avx2() -> tuple[str, str]:
    """The published int8 file under the AVX2-only CPU's kernels: on every test digit where this CPU is one (its own
    kernels, seconds), else on the first 1,000 (QEMU: minutes)."""
    from export.avx2 import native_avx2

    command = f".venv/bin/python scripts/int8_avx2.py --digits {10_000 if native_avx2() else 1000}"
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


@contextmanager
def container_running(port: int, env: dict[str, str], cwd: Path = ROOT) -> Iterator[str]:
    """`make container-run` on port, in its own process group (as a terminal runs it), stopped with SIGTERM, which
    run.sh handles as it does Ctrl-C (SIGINT would be ignored when this script runs in the background of a shell)."""
    from loadtest.server import wait_ready

    proc = subprocess.Popen(["make", "--no-print-directory", "container-run", f"PORT={port}"], cwd=cwd,
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", 300, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)


def metadata(url: str, keys: tuple[str, ...]) -> str:
    import httpx

    answer = httpx.post(url + "/metadata", json={}, timeout=60).json()
    return json.dumps({key: answer[key] for key in keys})


def kept(command: str, keep: Callable[[str], bool], env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """'$ command' and the lines of what it printed that `keep` keeps."""
    out = run(command + " 2>&1", env, cwd).replace(f"{cwd}/", "")  # paths as the repository names them
    return f"$ {command}\n" + "".join(line for line in out.splitlines(keepends=True) if keep(line))


def measure_container() -> tuple[str, str]:
    """The published model's CPU image: its build (size, time) and its answer (README, docs/containers.md)."""
    from loadtest.server import free_port

    port = free_port()
    text = kept("make container", lambda line: line.startswith(("container:", "base-image:", "bento: built")))
    started = time.perf_counter()
    with container_running(port, {}) as url:
        text += (f"$ make container-run PORT={port}   # /readyz answered {time.perf_counter() - started:.1f} s after the start\n"
                 f"$ curl -s -XPOST 127.0.0.1:{port}/metadata -d '{{}}'\n")
        text += metadata(url, ("model_file", "file_sha256", "variant", "providers")) + "\n"
    return "make container; make container-run (timed to its first ready answer); curl /metadata (its keys that name the model)", text


def measure_container_gpu() -> tuple[str, str]:
    """The published model's GPU image: its build and its check without a GPU (docs/containers.md)."""
    text = kept("make container-gpu", lambda line: line.startswith("container: built"))
    return "make container-gpu; make container-gpu-check", text + kept("make container-gpu-check", lambda line: True)


def readme_own_model_lines() -> list[str]:
    """The commands of the README's "Your own model" block, without their comments."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Your own model"):].split("```\n", 2)[1]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def measure_own_model() -> tuple[str, str]:
    """The README's "Your own model" lines as written, in a fresh clone of HEAD (its own venv, MNIST download,
    runs/ and artifacts/), each with the lines of what it printed that say what happened; `make serve` and
    `make container-run` are asked for /metadata, and the served file's sha256 is taken. The published model's
    image (capsnet:cpu, which the README's `make container` replaces) is built again afterwards."""
    import tempfile

    from loadtest.server import free_port, wait_ready

    train, export, serve, container, loadtest = readme_own_model_lines()
    files = ("model_file", "file_sha256", "variant", "test_accuracy")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        clone = Path(folder) / "capsnet"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        text = kept(train, lambda line: line[:1] in "c{", cwd=clone)
        text += kept(export, lambda line: line.startswith(("test accuracy", "int8 variant", "wrote")), cwd=clone)
        proc = subprocess.Popen(f"{serve} PORT={port}", shell=True, cwd=clone, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_ready(f"http://127.0.0.1:{port}", 300, proc)
            text += (f"$ {serve} PORT={port}\n$ curl -s -XPOST 127.0.0.1:{port}/metadata -d '{{}}'\n"
                     + metadata(f"http://127.0.0.1:{port}", files) + "\n")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        text += kept("sha256sum artifacts/capsnet-int8.onnx", lambda line: True, cwd=clone)
        build = container.split("&&")[0].strip()
        text += kept(build, lambda line: line.startswith(("bento: built", "container: built")), cwd=clone)
        with container_running(port, {}, cwd=clone) as url:
            text += (f"$ make container-run PORT={port}\n$ curl -s -XPOST 127.0.0.1:{port}/metadata -d '{{}}'\n"
                     + metadata(url, files[:3]) + "\n")
        text += kept(loadtest, lambda line: line.startswith(("int8 model", " users ", "p99 SLO"))
                     or line[:6].strip().isdigit(), cwd=clone)
    run("make container 2>&1")  # the published model's image again
    return "the README's five lines as written, in a fresh clone of HEAD (make serve and container-run on a free port)", text


def measure_fresh_clone() -> tuple[str, str]:
    """The README's test command from a fresh clone of HEAD, install included (.ci/run), then make test-quick."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        clone = Path(folder) / "capsnet"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        lines = []
        for command in (".ci/run", "make test-quick"):
            started = time.perf_counter()
            done = subprocess.run(command, shell=True, cwd=clone, capture_output=True, text=True, timeout=3600)
            seconds = time.perf_counter() - started
            summary = [line for line in done.stdout.splitlines() if line.startswith("=") and " in " in line]
            lines.append(f"$ {command}   # exit {done.returncode}, {seconds // 60:.0f} min {seconds % 60:.0f} s\n"
                         f"{summary[-1] if summary else done.stdout[-500:]}\n")
    return "git clone of HEAD into a temporary folder, then .ci/run and make test-quick there, timed", "".join(lines)


def measure_peers(out: str = "runs/docs-peers") -> tuple[str, str]:
    """The service beside PyTriton, KServe's server, LitServe, Ray Serve, BentoML's batchable API and the baseline,
    over HTTP and gRPC (`make peers`; their packages in .venv-peers and .venv-kserve: make peers-setup). A Markdown
    page of tables, shown as it is."""
    command = f".venv/bin/python -m loadtest.peers --out {out}"
    return command, run(command)


def measure_peers_again() -> tuple[str, str]:
    """The peers measured a second time (a ranking from one run is not a standing)."""
    return measure_peers("runs/docs-peers-2")


def measure_peers_fresh_clone() -> tuple[str, str]:
    """`make peers` from a fresh clone of HEAD as a new user runs it: the project's venv and the peers' two venvs
    installed (each step timed), then a short run of every peer (2 s per body, no warm-up: the table, not a
    ranking; the ranking is the two full runs')."""
    import tempfile

    steps = ("make setup", "make peers-setup", "make peers PEERS_ARGS='--seconds 2 --warmup 0 --out runs/peers'")
    with tempfile.TemporaryDirectory() as folder:
        clone = Path(folder) / "capsnet"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        text = ""
        for command in steps:
            started = time.perf_counter()
            done = subprocess.run(command, shell=True, cwd=clone, capture_output=True, text=True, timeout=3600)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}")
            text += f"- `{command}`: {seconds // 60:.0f} min {seconds % 60:.0f} s\n"
        text += "\n" + (clone / "runs" / "peers" / "peers.md").read_text()
    return "git clone of HEAD into a temporary folder, then " + "; ".join(steps) + ", each timed", text


def measure_slowclients() -> tuple[str, str]:
    command = ".venv/bin/python -m loadtest.slowclients --out runs/docs-slowclients"
    return command, run(command)


SOAK_RECORD = "docs/benchmarks/soak.json"  # the hour's every window, kept beside its plot


def measure_soak_run() -> tuple[str, str]:
    """An hour of the mixed load at 70% of its peak (BENCHMARKS.md): what it printed; its soak.json and plot kept."""
    import shutil

    command = ".venv/bin/python -m loadtest.soak --minutes 60 --out runs/docs-soak"
    text = run(command, timeout=2 * 3600)
    for name in ("soak.json", "soak.png"):
        shutil.copy(ROOT / "runs" / "docs-soak" / name, ROOT / "docs" / "benchmarks" / name)
    return command, text[text.index("peak of the mix"):]


def measure_soak() -> tuple[str, str]:
    """The hour's summary and verdict by the soak's current rules, from its kept windows (seconds)."""
    command = f".venv/bin/python -m loadtest.soak --report {SOAK_RECORD}"
    return command, run(command)


# In the order they run: the export first (it re-makes the published files), then what is measured on them.
MEASURES: dict[str, Callable[[], tuple[str, str]]] = {
    "export": measure_export, "int8-range": measure_int8_range, "int8-avx2": measure_int8_avx2,
    "runtimes": measure_runtimes,
    "training": measure_training, "examples": measure_examples, "loadtest": measure_loadtest, "pinned": measure_pinned,
    "replicas": measure_replicas, "replicas-again": measure_replicas_again, "slowclients": measure_slowclients, "soak-run": measure_soak_run, "soak": measure_soak,
    "peers": measure_peers, "peers-again": measure_peers_again, "peers-fresh-clone": measure_peers_fresh_clone,
    "container": measure_container, "container-gpu": measure_container_gpu, "own-model": measure_own_model, "fresh-clone": measure_fresh_clone}


def render(name: str) -> str:
    """A block's text from docs/numbers/NAME.json."""
    record = json.loads((NUMBERS / f"{name}.json").read_text())
    text = record["text"].rstrip()
    markdown = text.startswith("|") or "\n|---" in text  # a command that prints Markdown tables (pinned, peers)
    shown = text if markdown else f"```\n{text}\n```"  # as Markdown, else as printed
    return f"Measured with `{record['command']}` on {record['machine']}, {record['date']}, commit {record['commit']}:\n\n{shown}\n"


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
