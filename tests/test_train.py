import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from training.checkpoint import load_weights, sidecar
from training.data import load_split
from training.train import accuracy, main

TEST_LIMIT = 50
TINY = ["--limit", "64", "--test-limit", str(TEST_LIMIT), "--quiet", "--batch-size", "32"]  # two batches an epoch


def test_tiny_run_writes_checkpoint_metrics_and_sidecar(tiny_run, mnist_root):
    """The recorded test accuracy is the saved weights' own, recomputed here on the same 200 test digits."""
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert len(lines) == 1 and record["epoch"] == 1 and record["train_loss"] > 0
    model, info = load_weights(tiny_run / "checkpoint.safetensors")
    x, y = load_split("test", mnist_root, 200)
    assert record["test_acc"] == pytest.approx(accuracy(model, x, y), abs=1e-4)
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
    # the same updates: the final weights of the two runs agree to float rounding, tensor by tensor
    a = load_file(str(tmp_path / "ddp" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "one" / "checkpoint.safetensors"))
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_resume_with_ema_continues_exactly(tmp_path, mnist_root):
    """The EMA weights (what is saved and evaluated) come back from the run state too."""
    args = [*TINY, "--data", str(mnist_root), "--ema", "0.9"]
    main(["--epochs", "2", "--out", str(tmp_path / "a"), *args])
    main(["--epochs", "1", "--out", str(tmp_path / "b"), *args])
    main(["--epochs", "2", "--resume", "--out", str(tmp_path / "b"), *args])
    a = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    raw = torch.load(tmp_path / "b" / "train-state.pt", weights_only=True)["model"]
    assert not torch.equal(raw["digit_caps.W"], b["digit_caps.W"])  # what was saved is the average, not the raw


def test_the_cnn_baseline_trains_and_loads(tmp_path, mnist_root):
    from training.baseline import BaselineCNN

    record = main(["--arch", "cnn", "--epochs", "1", "--out", str(tmp_path / "cnn"), *TINY, "--data", str(mnist_root)])
    assert record["epoch"] == 1 and record["train_loss"] > 0
    model, info = load_weights(tmp_path / "cnn" / "checkpoint.safetensors")
    assert isinstance(model, BaselineCNN) and info["arch"] == "cnn"
    x, y = load_split("test", mnist_root, TEST_LIMIT)
    assert record["test_acc"] == pytest.approx(accuracy(model, x, y), abs=1e-4)


def test_init_continues_the_schedule_of_trained_weights_and_resumes(tiny_run, tmp_path, mnist_root):
    """--init: epoch count and learning rate go on after the weights' epoch; with --no-test nothing scores the
    test set; a stopped run goes on with --resume, to the same weights as one that was not stopped."""
    args = [*TINY, "--data", str(mnist_root), "--init", str(tiny_run / "checkpoint.safetensors"),
            "--warmup-steps", "2", "--ema", "0.9", "--val", "64", "--no-test", "--lr-decay", "0.5"]
    straight = main(["--epochs", "3", "--out", str(tmp_path / "a"), *args])
    assert straight["epoch"] == 3 and straight["lr"] == pytest.approx(1e-3 * 0.5 ** 2)
    assert "test_acc" not in straight and "val_acc" in straight
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["epoch"] == 2 and first["lr"] == pytest.approx(1e-3 * 0.5)
    main(["--epochs", "2", "--out", str(tmp_path / "b"), *args])
    main(["--epochs", "3", "--resume", "--out", str(tmp_path / "b"), *args])
    a = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoint.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert info["init"]["sha256"] == json.loads((tiny_run / "checkpoint.json").read_text())["sha256"]


def test_speed_probe_times_each_form_on_the_same_batch(mnist_root):
    from training.speed import main as speed

    results = speed(["--forms", "eager", "channels-last", "bf16-autocast", "--steps", "1", "--warmup", "1",
                     "--batch-size", "8", "--data", str(mnist_root)])
    assert all(r["images_per_s"] > 0 for r in results.values())
    # the same first batch from the same initial weights: fp32 forms agree, bf16 is close but not equal
    assert results["channels-last"]["first_loss"] == pytest.approx(results["eager"]["first_loss"], rel=1e-5)
    assert results["bf16-autocast"]["first_loss"] == pytest.approx(results["eager"]["first_loss"], rel=0.05)
