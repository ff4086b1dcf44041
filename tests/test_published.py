"""The committed model files: the weights are what their card says, and the committed ONNX files give, through
ONNX Runtime on all 10,000 test digits, the accuracies their verification report and card state, and the
fp32 file gives PyTorch's outputs on the published weights."""

import json

import numpy as np
import pytest

from export.artifact import VARIANTS, variant_path
from export.card import card_path
from export.avx2 import emulator, lengths_without_vnni, native_avx2
from export.onnx_export import report_path
from mnist import read_split
from serving.runtime import CapsNetRuntime
from scripts.int8_range import ROUNDING
from tests.conftest import PUBLISHED, PUBLISHED_ONNX, REQUIRE_TOOLS
from training.checkpoint import sha256_file

REPORT = json.loads(report_path(PUBLISHED_ONNX).read_text())
CARD = json.loads(PUBLISHED.with_suffix(".json").read_text())
AVX2_DIGITS = 48  # digits the published int8 file runs on the AVX2-only kernels under QEMU (about 8 a second)


def test_published_model_card_matches_the_weights():
    assert sha256_file(PUBLISHED) == CARD["sha256"]
    assert CARD["sha256"] in (PUBLISHED.parent / "README.md").read_text()


def test_provenance_files_agree_with_the_card():
    """The GPU session's selection record names the seed whose weights the card publishes."""
    selection = json.loads((PUBLISHED.parents[1] / "docs" / "gpu-runs" / "2026-11-26" / "selection.json").read_text())
    assert selection["chosen_seed"] == CARD["seed"]
    assert selection["final"][str(CARD["seed"])]["val_acc"] == max(r["val_acc"] for r in selection["final"].values())


def stated_accuracy(variant: str) -> float:
    return REPORT["test_accuracy_ort"] if variant == "fp32" else REPORT["variants"][variant]["test_accuracy_ort"]


def test_the_served_onnx_file_has_the_accuracy_it_states(mnist_root):
    """int8, the variant served on the CPU, measured here on all 10,000 test digits: the report's figure, on any
    x86-64 CPU (7-bit weights: the same answers with or without VNNI, the next test), which the card's row for the
    file states beside its sha256, within its bar of fp32. (fp32 and fp16, 19 and 21 s of the suite on 2 cores, are
    held to the export's measurement by their sha256 below, and fp32 to PyTorch.)"""
    images, labels = read_split("test", mnist_root)
    runtime = CapsNetRuntime(PUBLISHED_ONNX, device="cpu", variant="int8")
    assert runtime.variant == "int8"
    predicted = np.concatenate([runtime.predict(images[i:i + 500, None]).labels for i in range(0, 10_000, 500)])
    accuracy = float(np.mean(predicted == labels))
    assert accuracy == stated_accuracy("int8")
    assert REPORT["test_accuracy_ort"] - accuracy <= REPORT["variants"]["int8"]["accuracy_bar_points"] / 100
    assert_card_row("int8", stated_accuracy("int8"))


@pytest.mark.skipif(emulator() is None and not native_avx2() and not REQUIRE_TOOLS,
                    reason="needs Debian's qemu-user (make setup)")
def test_the_served_int8_file_answers_the_same_on_a_cpu_without_vnni(mnist_root):
    """The published int8 file on this CPU's kernels and on an AVX2-only CPU's (QEMU's AMD EPYC Rome, export/avx2.py):
    the same lengths (0 measured on 256 digits by scripts/int8_range.py; the 8-bit file it replaced moved by 0.08)."""
    images = read_split("test", mnist_root, AVX2_DIGITS)[0][:, None]
    path = variant_path(PUBLISHED_ONNX, "int8")
    here = CapsNetRuntime(PUBLISHED_ONNX, device="cpu", variant="int8").predict(images).lengths
    assert np.abs(lengths_without_vnni(path, images) - here).max() <= ROUNDING


def assert_card_row(variant: str, accuracy: float) -> None:
    """The row of the card the export wrote (models/capsnet-mnist.card.md) names the file's sha256 and accuracy."""
    path = variant_path(PUBLISHED_ONNX, variant)
    row = next((line for line in card_path(PUBLISHED_ONNX).read_text().splitlines() if f"`{path.name}`" in line), "")
    assert sha256_file(path) in row and f"{accuracy:.2%}" in row, f"{path.name}: its row in {card_path(PUBLISHED_ONNX)}"


def test_every_variant_is_pinned_by_sha256_beside_its_reported_accuracy():
    """The file the export measured is the file committed: its sha256 is in the card's row with the report's accuracy,
    fp32 meets the project's bar (99.70%) as the card says, and each variant its own bar against fp32."""
    assert REPORT["test_accuracy_ort"] >= 0.9970 and CARD["test_accuracy_ort"] == REPORT["test_accuracy_ort"]
    for variant in VARIANTS:
        accuracy = stated_accuracy(variant)
        assert_card_row(variant, accuracy)
        if variant != "fp32":
            assert REPORT["test_accuracy_ort"] - accuracy <= REPORT["variants"][variant]["accuracy_bar_points"] / 100


def test_the_committed_fp32_file_gives_pytorchs_outputs(mnist_root):
    """On 256 real digits, the published weights in PyTorch against the committed fp32 file in ONNX Runtime:
    export measured 3.0e-7 on the lengths and 6.7e-6 on the reconstructions (its report); held to 10x that."""
    import torch

    from training.checkpoint import load_weights

    images = read_split("test", mnist_root, 256)[0][:, None]
    model, _ = load_weights(PUBLISHED)
    with torch.no_grad():
        lengths, _, reconstruction = model(torch.from_numpy(images))
    got = CapsNetRuntime(PUBLISHED_ONNX, device="cpu", variant="fp32").predict(images)
    measured = REPORT["onnxruntime"]["batch_256"]
    assert np.abs(got.lengths - lengths.numpy()).max() <= 10 * measured["max_abs_diff_lengths"]
    assert np.abs(got.reconstructions - reconstruction.numpy()[:, 0]).max() <= 10 * measured["max_abs_diff_reconstruction"]
