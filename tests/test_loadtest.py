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
                       "--slo-users", "8", "--slo-p99-ms", "5000", "--images-per-request", "4")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["users"] for s in summary["steps"]] == [2, 8]
    for step in summary["steps"]:
        assert step["failures"] == 0 and step["requests"] > 20
        assert step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"]
        assert step["images_per_s"] == round(step["requests_per_s"] * 4, 1)
        assert 0 < step["fraction_of_in_process"] == round(step["images_per_s"]
                                                           / summary["in_process_best_images_per_s"], 3)
        assert (out / f"report-u{step['users']}.html").stat().st_size > 1000
    assert summary["slo"]["checked"] and summary["slo"]["passed"]
    assert summary["variant"] == "int8" and summary["body"] == "octets" and summary["images_per_request"] == 4
    assert summary["in_process_best_images_per_s"] == max(summary["in_process_images_per_s"].values())
    assert (out / "loadtest.png").stat().st_size > 5000
    assert "of in-process" in run.stdout


def test_a_missed_slo_fails_the_command(served_onnx, tmp_path, mnist_root):
    """Also the JSON body, one digit per request, on the fp32 model."""
    out = tmp_path / "lt"
    run = run_loadtest(served_onnx, out, mnist_root, "--users", "4", "--duration", "4", "--slo-users", "4",
                       "--slo-p99-ms", "0.001", "--body", "json", "--images-per-request", "1", "--variant", "fp32")
    assert run.returncode == 1
    assert "FAILED: p99" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["slo"]["passed"] and summary["variant"] == "fp32" and summary["body"] == "json"
    assert summary["steps"][0]["failures"] == 0 and summary["steps"][0]["requests"] > 20
