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
