"""Where a profiled process spent its time: self time by package, from a py-spy flame graph.

A flame graph shows each frame's inclusive share, and under asyncio an outer frame (a middleware, the
server) holds nearly everything, so inclusive shares say little about who does the work. This sums each
frame's self time (its samples minus its callees') by the package its file belongs to, for flame
graphs that py-spy recorded with --full-filenames (as `python -m loadtest.pinned --profile` does).

    python -m loadtest.flame docs/benchmarks/flame-1-json-after.svg
"""

from __future__ import annotations

import argparse
import html
import re
from collections import Counter, defaultdict
from pathlib import Path

FRAME = re.compile(r'<g><title>([^<]*)</title><rect[^>]*y="(\d+)"[^>]*fg:x="(\d+)" fg:w="(\d+)"')
TOTAL = re.compile(r'total_samples="(\d+)"')
STDLIB = re.compile(r"/lib/python3\.\d+/([^/]+)")


def package(title: str) -> str:
    """The package of a frame's file: the folder under site-packages, the standard library's module, or the
    repository's top folder (`serving`, `loadtest`, ...)."""
    match = re.search(r"\((.*?):\d+\)", html.unescape(title))
    path = match.group(1) if match else ""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/")[0].removesuffix(".py")
    if stdlib := STDLIB.search(path):
        return "python: " + stdlib.group(1).removesuffix(".py")
    if path.startswith("<"):
        return "python: " + path
    return path.split("/")[0].removesuffix(".py") or "(no file)"


def self_time_by_package(svg: str) -> dict[str, float]:
    """Each package's share (%) of the samples, by self time; the shares add up to 100."""
    total = int(TOTAL.search(svg).group(1))
    frames = [(int(y), int(x), int(w), title) for title, y, x, w in FRAME.findall(svg)]
    by_depth: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for y, x, w, _ in frames:
        by_depth[y].append((x, w))
    step = min((b - a for a, b in zip(sorted(by_depth), sorted(by_depth)[1:])), default=0)
    shares: Counter[str] = Counter()
    for y, x, w, title in frames:
        callees = sum(cw for cx, cw in by_depth.get(y + step, []) if x <= cx < x + w)
        shares[package(title)] += w - callees
    shares["(outside Python)"] += total - sum(w for y, _, w, _ in frames if y == min(by_depth))
    return {name: round(100 * n / total, 1) for name, n in shares.most_common() if n > 0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.flame", description=__doc__.split("\n\n")[0])
    p.add_argument("svg", type=Path, nargs="+", help="py-spy flame graphs (recorded with --full-filenames)")
    p.add_argument("--top", type=int, default=12, help="packages to show (default: 12)")
    args = p.parse_args(argv)
    for svg in args.svg:
        shares = self_time_by_package(svg.read_text())
        print(f"{svg}: " + ", ".join(f"{name} {share}%" for name, share in list(shares.items())[:args.top]))


if __name__ == "__main__":
    main()
