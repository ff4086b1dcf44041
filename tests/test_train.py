import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_weights, sidecar
from training.train import main

TINY = ["--limit", "128", "--test-limit", "100", "--quiet", "--batch-size", "32"]


def test_tiny_run_writes_checkpoint_metrics_and_sidecar(tiny_run):
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert len(lines) == 1 and record["epoch"] == 1
    assert 0.0 <= record["test_acc"] <= 1.0 and record["train_loss"] > 0
    model, info = load_weights(tiny_run / "checkpoint.safetensors")
    assert info["config"]["routing_iters"] == 3 and info["seed"] == 3 and info["arch"] == "capsnet"
    assert info["command"].startswith("python -m training")
    assert not (tiny_run / "checkpoint.safetensors.tmp").exists()


def test_tampered_weights_are_refused(tiny_run, tmp_path):
    weights = tmp_path / "w.safetensors"
    data = bytearray((tiny_run / "checkpoint.safetensors").read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    sidecar(weights).write_text(sidecar(tiny_run / "checkpoint.safetensors").read_text())
    with pytest.raises(ValueError, match="sha256"):
        load_weights(weights)


def test_same_seed_same_numbers_and_resume_continues_exactly(tmp_path, mnist_root):
    data = ["--data", str(mnist_root)]
    straight = main(["--epochs", "2", "--out", str(tmp_path / "a"), *TINY, *data])
    again = main(["--epochs", "2", "--out", str(tmp_path / "b"), *TINY, *data])
    assert straight == {**again, "epoch_seconds": straight["epoch_seconds"],
                        "train_images_per_s": straight["train_images_per_s"]}
    main(["--epochs", "1", "--out", str(tmp_path / "c"), *TINY, *data])
    resumed = main(["--epochs", "2", "--resume", "--out", str(tmp_path / "c"), *TINY, *data])
    assert resumed["test_acc"] == straight["test_acc"] and resumed["train_loss"] == straight["train_loss"]
    a = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    c = load_file(str(tmp_path / "c" / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert len((tmp_path / "c" / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_help_states_defaults():
    out = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, check=True)
    assert "--epochs" in out.stdout and "(default: 128)" in out.stdout and "--resume" in out.stdout


def test_ddp_two_processes_on_cpu_agree_with_each_other_and_with_one_process(tmp_path, mnist_root):
    args = ["--epochs", "1", "--drop-last", "--device", "cpu", "--threads", "1", *TINY, "--data", str(mnist_root)]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "training", *args, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.jsonl").read_text())
    sums = ddp["rank_param_sums"]
    assert len(sums) == 2 and sums[0] == sums[1]
    single = main([*args, "--out", str(tmp_path / "one")])
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert ddp["test_acc"] == pytest.approx(single["test_acc"], abs=0.02)
