import json

import pytest
import torch

from tests.conftest import ROOT
from training import evaluate
from training.data import load_split


def test_affine_distortion_is_seeded_and_identity_at_zero(mnist_root, monkeypatch):
    x, _ = load_split("test", mnist_root, 16)
    a, b = evaluate.affine_distort(x), evaluate.affine_distort(x)
    assert torch.equal(a, b) and not torch.allclose(a, x, atol=0.1)
    assert not torch.equal(a, evaluate.affine_distort(x, seed=1))
    monkeypatch.setattr(evaluate, "AFFINE", {"seed": 0, "rotation_deg": 0.0, "scale": (1.0, 1.0),
                                             "shear_deg": 0.0, "shift_px": 0.0})
    assert torch.allclose(evaluate.affine_distort(x), x, atol=1e-5)


def test_all_experiments_write_png_and_json(tiny_run, tmp_path, mnist_root):
    baseline = ROOT / "models" / "baseline-cnn.safetensors"
    if not baseline.exists():
        pytest.skip("no baseline CNN weights")
    out = tmp_path / "exp"
    results = evaluate.main(["--weights", str(tiny_run / "checkpoint.safetensors"), "--baseline", str(baseline),
                             "--limit", "100", "--data", str(mnist_root), "--out", str(out)])
    for name in evaluate.EXPERIMENTS:
        assert (out / f"{name}.png").stat().st_size > 5000
        assert json.loads((out / f"{name}.json").read_text())
    assert list(results["routing"]["accuracy"]) == ["1", "2", "3", "5"]
    assert results["perturb"]["offsets"][0] == -0.25 and results["perturb"]["offsets"][-1] == 0.25
    assert len(results["perturb"]["offsets"]) == 11
    assert results["affine"]["accuracy"]["cnn_baseline"]["clean"] > 0.9  # the real baseline on real digits


def test_silencing_no_cell_changes_nothing_and_the_routing_map_ranks_better_than_chance(mnist_root, tmp_path):
    """On 100 real test digits with the published weights: the map's top cells matter more than random ones,
    its bottom cells less (what docs/experiments/occlusion.json says on 1,000)."""
    from training.checkpoint import load_weights

    weights = ROOT / "models" / "capsnet-mnist.safetensors"
    if not weights.exists():
        pytest.skip("no published weights")
    model, _ = load_weights(weights)
    x, y = load_split("test", mnist_root, 100)
    with torch.no_grad():
        u = model.primary_caps(torch.relu(model.conv1(x)))
        lengths = model(x)[0]
    winner = lengths.argmax(1)
    unchanged = evaluate.winner_after_silencing(model, u, torch.zeros(100, 0, dtype=torch.long), winner)
    assert torch.allclose(unchanged, lengths[torch.arange(100), winner], atol=1e-6)
    data = evaluate.occlusion(model, x, y, tmp_path)
    drops = data["mean_length_drop"]
    assert drops["highest"]["3"] > 3 * drops["random"]["3"] > 0
    assert drops["lowest"]["3"] < drops["random"]["3"]
