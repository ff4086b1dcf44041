"""The parsers' fuzz targets (fuzz/): each runs briefly under atheris from its seeds, every input a fuzzer ever
found is replayed as a test, and a target does fail on an error that is not the service's own."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fuzz.__main__ import FINDINGS, TARGET_NAMES
from fuzz.targets import TARGETS, answered_or_refused
from serving.errors import InvalidInput, TooLarge

ROOT = Path(__file__).resolve().parents[1]
BRIEF_RUNS = 200


def test_every_target_has_a_name_the_command_takes():
    assert sorted(TARGETS) == sorted(TARGET_NAMES)


@pytest.mark.slow
def test_each_target_runs_briefly_without_a_finding(tmp_path):
    """Every target at once, each in a process of its own (atheris fuzzes one target per process; most of a brief
    run is the process's start)."""
    def brief(target: str) -> tuple[str, subprocess.CompletedProcess]:
        corpus = tmp_path / target
        corpus.mkdir()
        return target, subprocess.run([sys.executable, "-m", "fuzz", target, "--runs", str(BRIEF_RUNS), "--corpus",
                                       str(corpus)], cwd=ROOT, capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(len(TARGET_NAMES)) as pool:
        for target, done in pool.map(brief, TARGET_NAMES):
            assert done.returncode == 0, f"{target}: {done.stderr[-3000:]}"
            assert f"Done {BRIEF_RUNS} runs" in done.stderr, target
            assert any(p.name.startswith("seed-") for p in (tmp_path / target).iterdir()), target


FOUND = sorted(p for p in FINDINGS.glob("*/*") if p.is_file() and p.name != ".gitkeep")


@pytest.mark.parametrize("path", FOUND, ids=[f"{p.parent.name}/{p.name}" for p in FOUND])
def test_every_input_a_fuzzer_found_is_answered_or_refused(path):
    TARGETS[path.parent.name](path.read_bytes())


def test_the_services_own_errors_are_refusals_and_anything_else_is_a_finding():
    def refuse():
        raise TooLarge("over the limit")

    answered_or_refused(refuse)
    answered_or_refused(lambda: InvalidInput)  # an answer
    with pytest.raises(AttributeError):
        answered_or_refused(lambda: [].get("images"))


@pytest.mark.slow
def test_a_short_black_box_fuzz_of_every_route_finds_no_5xx_hang_or_traceback(tmp_path):
    """fuzz/outside.py against a real `bentoml serve` for a few seconds (make fuzz runs it for 3 minutes)."""
    from fuzz import outside

    assert outside.main(["--seconds", "8", "--threads", "4", "--log", str(tmp_path / "service.log")]) == 0
