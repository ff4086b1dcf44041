"""python -m loadtest.pinned in its quick mode: the service and the hand-written baseline, each pinned to its
own core with wrk on another, for the three bodies; every request answered, every number measured."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import REQUIRE_TOOLS

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif((shutil.which("wrk") is None or len(os.sched_getaffinity(0)) < 2)
                                and not REQUIRE_TOOLS, reason="needs Debian's wrk and 2 cores")


def test_pinned_measurement_reports_the_service_beside_the_baseline(tmp_path, mnist_root):
    run = subprocess.run([sys.executable, "-m", "loadtest.pinned", "--quick", "--out", str(tmp_path),
                          "--data", str(mnist_root)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "pinned.json").read_text())
    assert report["in_process_images_per_s"] > 0
    rows = {(r["server"], r["body"]): r for r in report["rows"]}
    assert set(rows) == {(s, b) for s in ("service", "reference")
                         for b in ("1 digit, JSON", "1 digit, raw float32", "8 digits, raw float32")}
    for row in rows.values():
        assert row["requests"] > 0 and row["non_2xx"] == 0
        assert row["cpu_ms_per_request"] > 0 and 0 < row["share_of_in_process"] < 2
        assert row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
        split = row["server_split"]  # the service's own side, from its /metrics over the same runs
        if row["server"] == "reference":
            assert split is None
        else:
            assert split["requests"] >= row["requests"] and split["compute_ms"] > 0 and split["batch_images"] >= 1
    assert (tmp_path / "pinned.md").read_text().strip() in run.stdout


def frame(title: str, y: int, x: int, w: int) -> str:
    return f'<g><title>{title}</title><rect x="0%" y="{y}" width="1%" height="15" fill="red" fg:x="{x}" fg:w="{w}"/></g>'


def test_self_time_is_each_frames_samples_less_its_callees_by_package():
    from loadtest.flame import self_time_by_package

    svg = "".join(['<svg total_samples="20">',
                   frame("main (.venv/lib/python3.11/site-packages/uvicorn/server.py:1) (16 samples, 80%)", 84, 0, 16),
                   frame("classify (serving/direct.py:9) (10 samples, 50%)", 100, 0, 10),
                   frame("loads (/usr/lib/python3.11/json/__init__.py:3) (4 samples, 20%)", 116, 2, 4),
                   frame("next_event (.venv/lib/python3.11/site-packages/h11/_connection.py:5) (5 samples, 25%)",
                         100, 11, 5), "</svg>"])
    assert self_time_by_package(svg) == {"serving": 30.0, "h11": 25.0, "python: json": 20.0, "(outside Python)": 20.0,
                                         "uvicorn": 5.0}


def test_the_committed_profiles_add_up():
    from loadtest.flame import self_time_by_package

    for name in ("json", "raw"):
        shares = self_time_by_package((ROOT / f"docs/benchmarks/flame-1-{name}-after.svg").read_text())
        assert abs(sum(shares.values()) - 100) < 0.5
        assert shares["serving"] > 1 and shares["h11"] > 5
        assert shares.get("opentelemetry", 0) < 3  # tracing off: only its URL check is left (12-31% in the before ones)


def test_flame_graphs_name_no_path_outside_the_repository():
    from loadtest.pinned import relative_paths

    svg = ('<title>classify (/srv/repo/serving/direct.py:9) (10 samples)</title><text>classify (/srv/re..</text>'
           '<text>run (/usr/li..</text>')
    assert relative_paths(svg, "/srv/repo/") == ('<title>classify (serving/direct.py:9) (10 samples)</title>'
                                                 '<text>classify (..</text><text>run (/usr/li..</text>')
