"""The measured figures a document states, and whether a record holds each (tests/test_docs.py fails on one that
none holds: a figure typed by hand).

A figure is a number with the unit of a measurement: a percentage or accuracy points, a time (ms, s, minutes,
hours), a rate (req/s, requests/s, images/s), a size (kB, MB, MiB, GB) or a ratio (2.4x). A record is a file a
command wrote: docs/numbers/*.json (what `make publish` and `make docs-numbers` measure), docs/runtimes.json,
docs/experiments/*.json, the GPU runs' records under docs/gpu-runs/, and models/*.json (the training records and
the export's verification report and the card it writes from it), and docs/paper.json (what the documents cite
from the paper). A record holds a figure when one of its numbers, written with as many decimals
as the figure (or as a percentage, or in thousands or millions for a size or a rate), is the figure's number.
A block rendered from a record (`<!-- numbers: NAME -->`) is that record's text, and is not read again; nor are
comments and inline code (a command's arguments). What the code sets rather than measures (a limit, a default)
is named beside its setting and read from serving/limits.py and serving/settings.py: a figure whose number is
one of their constants is the code's.

    python scripts/figures.py      # every figure no record holds, as page:line: figure
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "BENCHMARKS.md", "docs/*.md", "models/README.md", "models/ONNX.md")  # a model's card.md is the export's record
RECORDS = ("docs/numbers/*.json", "docs/runtimes.json", "docs/experiments/*.json", "docs/gpu-runs/**/*.json",
           "docs/gpu-runs/**/*.jsonl", "docs/gpu-runs/**/*.txt", "docs/paper.json", "models/*.json", "models/*.card.md")
CODE = ("serving/limits.py", "serving/settings.py")
UNITS = r"%|points|ms|s|seconds|min|minutes|h|hours|req/s|requests/s|images/s|kB|MB|MiB|GB|GiB|x"
FIGURE = re.compile(rf"(?<![\w.\-/=:+])(?P<number>\d{{1,3}}(?:,\d{{3}})+|\d+)(?P<decimals>\.\d+)?\s?(?P<unit>{UNITS})"
                    r"(?![\w/%])")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
SKIPPED = re.compile(r"<!-- numbers: [\w-]+ -->.*?<!-- /numbers -->|<!--.*?-->|`[^`\n]*`", re.S)


@dataclass(frozen=True)
class Figure:
    page: str
    line: int
    text: str
    value: float
    decimals: int
    unit: str


def figures(page: Path, root: Path = ROOT) -> list[Figure]:
    """The figures of one page outside rendered blocks, code blocks and inline code."""
    text = page.read_text()
    text = SKIPPED.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep the line numbers
    found = []
    for m in FIGURE.finditer(text):
        decimals = m.group("decimals") or ""
        found.append(Figure(str(page.relative_to(root)), text.count("\n", 0, m.start()) + 1, m.group(0),
                            float(m.group("number").replace(",", "") + decimals), max(len(decimals) - 1, 0),
                            m.group("unit")))
    return found


def numbers(path: Path) -> set[float]:
    """Every number a record holds: JSON values and keys, and the numbers in its strings (what a command printed)."""
    found: set[float] = set()

    def walk(item) -> None:
        if isinstance(item, bool):
            return
        if isinstance(item, (int, float)):
            found.add(float(item))
        elif isinstance(item, str):
            found.update(float(n) for n in NUMBER.findall(item.replace(",", "")))
        elif isinstance(item, dict):
            for key, value in item.items():
                walk(key)
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)

    text = path.read_text()
    try:
        walk(json.loads(text))
    except ValueError:
        walk(text)
    return found


def recorded(root: Path = ROOT) -> set[float]:
    held: set[float] = set()
    for pattern in RECORDS:
        for path in root.glob(pattern):
            held |= numbers(path)
    for path in CODE:
        held |= {float(n) for n in NUMBER.findall((root / path).read_text().replace("_", ""))}
    return held


class Held:
    """The numbers held, looked up as a figure writes them: with its decimals, x100 for a percentage, in thousands
    or millions (or thousandths) for a size, a rate or a time."""

    def __init__(self, held: set[float]):
        self.held, self.rounded = held, {}

    def holds(self, figure: Figure) -> bool:
        scales = (1.0, 100.0) if figure.unit in ("%", "points") else (1.0, 1e-3, 1e-6, 1e3)
        for scale in scales:
            key = (scale, figure.decimals)
            if key not in self.rounded:
                self.rounded[key] = {round(n * scale, figure.decimals) for n in self.held}
            if round(figure.value, figure.decimals) in self.rounded[key]:
                return True
        return False


def unrecorded(root: Path = ROOT) -> list[Figure]:
    held = Held(recorded(root))
    pages = sorted({p for pattern in PAGES for p in root.glob(pattern)})
    return [f for page in pages for f in figures(page, root) if not held.holds(f)]


def main() -> int:
    missing = unrecorded()
    for f in missing:
        print(f"{f.page}:{f.line}: {f.text}")
    print(f"{len(missing)} figures no record holds", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
