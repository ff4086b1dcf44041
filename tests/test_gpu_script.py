"""scripts/gpu-train-seeds.sh, the prepared GPU session, in its CPU dry-run mode: it trains, chooses by
validation accuracy, and returns the chosen checkpoint in parts that reassemble."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import ROOT
from training.checkpoint import load_weights


def test_dry_run_packs_the_run_chosen_by_validation(tmp_path, mnist_root):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "QUICK": "1", "EPOCHS": "1", "SEEDS": "1 2", "OUT": str(out), "WORK": str(work),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", "scripts/gpu-train-seeds.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    parts = sorted(out.glob("pack.tar.part-*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    (tmp_path / "pack.tar").write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(tmp_path / "pack.tar") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    pack = tmp_path / "back" / "pack"
    selection = json.loads((pack / "selection.json").read_text())
    assert set(selection["final"]) == {"capsnet-s1", "capsnet-s2"}
    chosen = max(selection["final"], key=lambda name: selection["final"][name]["val_acc"])
    assert selection["chosen"] == chosen
    _, info = load_weights(pack / "capsnet" / "checkpoint.safetensors")
    assert info["seed"] == int(chosen.removeprefix("capsnet-s"))


def gpu_run(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/gpu-run.sh", "--dry-run", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RUNS": str(out / "experiment-runs")})


def test_the_gpu_run_in_its_cpu_dry_run_does_every_step(tmp_path):
    """scripts/gpu-run.sh --dry-run: the GPU session's steps on the CPU, tiny sizes, each with its result file."""
    run = gpu_run(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s.get("rc")) for s in steps] == [
        ("serving", 0), ("sweep", 0), ("bench", 0), ("scaling-w1", 0), ("tests", 0), ("affnist", 0),
        ("multimnist", 0)], steps
    serving = json.loads((tmp_path / "serving.json").read_text())
    assert serving["ok"] and serving["metadata"]["providers"] == ["CPUExecutionProvider"]
    assert serving["metadata"]["variant"] == "fp16" and serving["labels_agree_with_cpu"] == serving["digits"] == 64
    sweep = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert sweep["device"] == "cpu" and sweep["variant"] == "fp16" and sweep["steps"][0]["failures"] == 0
    assert sweep["steps"][0]["requests"] > 0
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {"pytorch-eager", "ort-fp32"} <= set(bench["images_per_s"])
    scaling = json.loads((tmp_path / "scaling-w1" / "summary.json").read_text())
    assert scaling["workers"] == 1 and scaling["steps"][0]["failures"] == 0
    assert "skipped" in (tmp_path / "tests.log").read_text()  # the GPU-marked tests, skipped without CUDA
    # #28's experiments on their smoke schedule: both models trained on their canvas and scored
    affnist = json.loads((tmp_path / "experiments" / "affnist-smoke.json").read_text())
    assert set(affnist["accuracy"]) == {"capsnet", "cnn"} and affnist["runs"]["capsnet"]["epochs"] == 1
    assert set(affnist["accuracy"]["cnn"]) == {"placed", "affnist_like"} and not affnist["final"]
    multi = json.loads((tmp_path / "experiments" / "multimnist-smoke.json").read_text())
    assert set(multi["accuracy_both_named"]) == {"capsnet", "cnn"} and multi["pairs"]["canvas"] == 36
    assert (tmp_path / "experiments" / "multimnist-smoke.png").stat().st_size > 10_000
    summary = (tmp_path / "summary.md").read_text()
    for part in ("| serving | exit 0", "Serving: cpu, variant fp16", "Sweep (cpu, fp16", "Throughput (cpu",
                 "CPU scaling", "Experiment affnist-smoke (schedule smoke)", "Experiment multimnist-smoke"):
        assert part in summary, part


def test_a_step_the_time_left_does_not_allow_is_skipped_and_said(tmp_path):
    run = gpu_run(tmp_path, "--budget", "30")
    assert run.returncode == 0, run.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [(s["step"], s["skipped"].split(",")[0]) for s in steps] == [
        ("serving", "needs up to 120 s"), ("sweep", "needs up to 77 s"), ("bench", "needs up to 240 s"),
        ("scaling-w1", "needs up to 47 s"), ("tests", "needs up to 120 s"), ("affnist", "needs up to 570 s"),
        ("multimnist", "needs up to 570 s")]
    assert "gpu-run: skip serving (needs up to 120 s" in run.stderr
