"""A real headless Locust run against a real service, bounded to 8 users and 10 seconds."""

import json
import subprocess
import sys


def test_short_locust_run_has_no_failures(served_onnx, tmp_path, mnist_root):
    out = tmp_path / "lt"
    run = subprocess.run([sys.executable, "-m", "loadtest", "--users", "8", "--duration", "10", "--digits", "64",
                          "--model", str(served_onnx), "--out", str(out), "--data", str(mnist_root)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 0 and summary["requests"] > 50
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
    assert (out / "report.html").stat().st_size > 1000 and (out / "locust_stats.csv").exists()
