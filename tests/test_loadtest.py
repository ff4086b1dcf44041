"""Real headless Locust runs against a real service, bounded in users and seconds."""

import json
import subprocess
import sys


def run_loadtest(served_onnx, out, mnist_root, *extra):
    return subprocess.run([sys.executable, "-m", "loadtest", "--digits", "64", "--model", str(served_onnx),
                           "--out", str(out), "--data", str(mnist_root), *extra],
                          capture_output=True, text=True, timeout=400)


def test_short_sweep_has_no_failures_and_reports_every_step(served_onnx, tmp_path, mnist_root):
    out = tmp_path / "lt"
    run = run_loadtest(served_onnx, out, mnist_root, "--users", "2", "8", "--duration", "8",
                       "--slo-users", "8", "--slo-p99-ms", "5000")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["users"] for s in summary["steps"]] == [2, 8]
    for step in summary["steps"]:
        assert step["failures"] == 0 and step["requests"] > 20
        assert step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]
        assert 0 < step["fraction_of_in_process"] == round(step["requests_per_s"]
                                                           / summary["in_process_images_per_s_batch64"], 3)
        assert (out / f"report-u{step['users']}.html").stat().st_size > 1000
    assert summary["slo"]["checked"] and summary["slo"]["passed"]
    assert (out / "loadtest.png").stat().st_size > 5000
    assert "of in-process" in run.stdout


def test_a_missed_slo_fails_the_command(served_onnx, tmp_path, mnist_root):
    out = tmp_path / "lt"
    run = run_loadtest(served_onnx, out, mnist_root, "--users", "4", "--duration", "4",
                       "--slo-users", "4", "--slo-p99-ms", "0.001")
    assert run.returncode == 1
    assert "FAILED: p99" in run.stderr
    assert not json.loads((out / "summary.json").read_text())["slo"]["passed"]
