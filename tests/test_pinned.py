"""python -m loadtest.pinned in its quick mode: the service and the hand-written baseline, each pinned to its
own core with wrk on another, for the three bodies; every request answered, every number measured."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif((shutil.which("wrk") is None or len(os.sched_getaffinity(0)) < 2)
                                and not os.environ.get("CI"), reason="needs Debian's wrk and 2 cores")


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
        assert row["p50_ms"] <= row["p99_ms"]
    assert (tmp_path / "pinned.md").read_text().strip() in run.stdout
