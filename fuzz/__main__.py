"""python -m fuzz TARGET: one parser of the service fuzzed by atheris (libFuzzer, coverage-guided), seeded with real
digits and the hostile cases (fuzz/seeds.py) and with every input kept from earlier findings (fuzz/findings/TARGET/,
replayed first). An input that raises anything but the service's own errors is a finding: libFuzzer stops and
writes it to fuzz/findings/TARGET/crash-<sha1> (a slow one, past --timeout, timeout-<sha1>); fix it and keep the
file, which every later run and tests/test_fuzz.py replay.

    python -m fuzz json --seconds 1800      # what `make fuzz` runs for each target
    python -m fuzz json --runs 300          # the brief run `make test` makes of each (tests/test_fuzz.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "fuzz" / "findings"
# the code whose branches guide the fuzzer: ours, and the third-party parsers ours hands bytes to
INSTRUMENTED = ["serving", "multipart", "starlette.formparsers", "PIL"]
TARGET_NAMES = ["octets", "json", "v2-json", "v2-binary", "grpc", "multipart", "image"]  # fuzz/targets.py's TARGETS


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("target", choices=TARGET_NAMES)
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--seconds", type=int, default=60, help="how long to fuzz")
    stop.add_argument("--runs", type=int, help="how many inputs to try instead (after replaying the corpus)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="where the inputs that found new code are kept (default: runs/fuzz/TARGET)")
    p.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a finding")
    p.add_argument("--max-len", type=int, default=16384, help="the longest input tried, in bytes")
    p.add_argument("--data", type=Path, default=ROOT / "data", help="MNIST root folder (the seeds' digits)")
    args = p.parse_args(argv)

    with atheris.instrument_imports(include=INSTRUMENTED):
        from PIL import Image

        Image.init()  # Pillow imports its format plugins on first use: here, so that they are instrumented
        from fuzz.targets import TARGETS
    from fuzz.seeds import seeds
    from mnist import read_split

    corpus = args.corpus or ROOT / "runs" / "fuzz" / args.target
    findings = FINDINGS / args.target
    corpus.mkdir(parents=True, exist_ok=True)
    findings.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(read_split("test", args.data, 2)[0])[args.target]):
        (corpus / f"seed-{i:02d}").write_bytes(seed)
    stop_at = f"-runs={args.runs}" if args.runs is not None else f"-max_total_time={args.seconds}"
    libfuzzer = [sys.argv[0], stop_at, f"-timeout={args.timeout}", f"-max_len={args.max_len}", "-rss_limit_mb=4096",
                 "-print_final_stats=1", f"-artifact_prefix={findings}/", str(corpus), str(findings)]
    print(f"fuzz: {args.target}: {' '.join(libfuzzer[1:])}", file=sys.stderr, flush=True)
    atheris.Setup(libfuzzer, TARGETS[args.target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
