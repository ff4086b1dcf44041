import collections
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from export.artifact import OUTPUTS, variant_path
from export.avx2 import emulator, native_avx2
from export.onnx_export import export_onnx, on_canvas, report_path
from tests.conftest import OWN_CANVAS, REQUIRE_TOOLS, ROOT
from export.variants import INT8
from training.checkpoint import load_weights
from training.data import load_split

S = OWN_CANVAS  # the tests' own model (tests/conftest.py: own_run) is for S x S images
GRID = (S - 16) // 2  # its primary capsules' grid (6 at MNIST's 28)


def own_digits(mnist_root, n: int) -> np.ndarray:
    """The first n MNIST test digits centred on the own model's canvas, (n, 1, S, S) float32."""
    return on_canvas(load_split("test", mnist_root, n)[0].numpy(), S)


def test_graph_is_self_contained_with_dynamic_batch_and_metadata(exported, own_run):
    model = onnx.load(str(exported))
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    dims = [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert [i.type.tensor_type.shape.dim[2].dim_value for i in model.graph.input] == [S]
    assert dims[0][1:] == [10] and dims[1][1:] == [10, 16] and dims[2][1:] == [1, S, S]
    assert dims[3][1:] == [GRID, GRID] and dims[4][1:] == [32]
    assert isinstance(dims[0][0], str)  # symbolic batch axis
    meta = {p.key: p.value for p in model.metadata_props}
    info = json.loads((own_run / "checkpoint.json").read_text())
    assert meta["routing_iterations"] == "3" and meta["opset"] == "18"
    assert meta["source_sha256"] == info["sha256"]
    report = json.loads(report_path(exported).read_text())
    assert float(meta["test_accuracy_ort"]) == report["test_accuracy_ort"] and meta["test_digits"] == "500"
    ops = {n.op_type for n in model.graph.node}
    assert "MatMul" in ops and "Loop" not in ops and "Softmax" in ops  # routing unrolled, batched MatMul


def test_variants_are_written_beside_and_named_by_the_fp32_graph(exported, mnist_root):
    """Each variant's accuracy, recomputed here with ONNX Runtime and numpy, is what its metadata and the report say."""
    import onnxruntime as ort

    report = json.loads(report_path(exported).read_text())
    assert set(report["variants"]) == {"int8", "fp16"}
    fp32_meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(fp32_meta["variants"]) == {"int8": "capsnet-int8.onnx", "fp16": "capsnet-fp16.onnx"}
    x, y = own_digits(mnist_root, 500), load_split("test", mnist_root, 500)[1]
    correct = {}
    for name in ("fp32", "int8", "fp16"):
        session = ort.InferenceSession(str(variant_path(exported, name)), providers=["CPUExecutionProvider"])
        lengths = np.concatenate([session.run(["lengths"], {"image": x[i:i + 100]})[0]
                                  for i in range(0, 500, 100)])
        correct[name] = int((lengths.argmax(1) == y.numpy()).sum())
    assert report["test_accuracy_ort"] == correct["fp32"] / 500
    for name, v in report["variants"].items():
        meta = {p.key: p.value for p in onnx.load(str(variant_path(exported, name))).metadata_props}
        assert meta["variant"] == name and meta["source_sha256"] == fp32_meta["source_sha256"]
        assert v["test_accuracy_ort"] == correct[name] / 500 and v["test_digits"] == 500
        assert v["accuracy_loss_points"] == round((correct["fp32"] - correct[name]) / 5, 4)
        assert float(meta["accuracy_loss_points"]) == v["accuracy_loss_points"]
        assert meta["meets_accuracy_bar"] == str(v["accuracy_loss_points"] <= v["accuracy_bar_points"]).lower()
    ops = collections.Counter(n.op_type for n in onnx.load(str(variant_path(exported, "int8"))).graph.node)
    assert ops["QuantizeLinear"] >= 2 and ops["DequantizeLinear"] >= 4  # both convolutions quantized
    fp16 = onnx.load(str(variant_path(exported, "fp16")))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 at the edges
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)


def run_export(*args):
    return subprocess.run([sys.executable, "-m", "export", "--batch-seconds", "0.05", *map(str, args)], capture_output=True,
                          text=True)


def test_export_removes_variants_it_did_not_make(tiny_run, tmp_path, mnist_root):
    """Old int8/fp16 files beside a new fp32 graph would be variants of other weights: export removes them."""
    out = tmp_path / "capsnet.onnx"
    for name in ("int8", "fp16"):
        variant_path(out, name).write_bytes(b"a variant of older weights")
    run = run_export("--checkpoint", tiny_run / "checkpoint.safetensors", "--out", out, "--accuracy-digits", 50,
                     "--verify-digits", 50, "--data", mnist_root, "--variants")
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capsnet-decoder.onnx", "capsnet.card.md", "capsnet.onnx",
                                                          "capsnet.verify.json", "triton"]
    assert (tmp_path / "triton" / "capsnet" / "1" / "model.onnx").resolve() == out.resolve()  # its Triton repository
    assert json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["variants"]) == {}


def test_a_graph_that_disagrees_fails_the_cli_and_writes_nothing(tiny_run, tmp_path, mnist_root, monkeypatch, capsys):
    """python -m export: PyTorch's side is perturbed, so verification fails: exit 1, no file beside --out."""
    import export.onnx_export
    from export.__main__ import main

    real = export.onnx_export.torch_outputs

    def perturbed(model, images, batch_size=256):
        outputs = real(model, images, batch_size)
        return {**outputs, "lengths": outputs["lengths"] + 1e-3}

    monkeypatch.setattr(export.onnx_export, "torch_outputs", perturbed)
    out = tmp_path / "artifacts" / "capsnet.onnx"
    code = main(["--checkpoint", str(tiny_run / "checkpoint.safetensors"), "--out", str(out),
                 "--accuracy-digits", "50", "--verify-digits", "50", "--data", str(mnist_root)])
    assert code == 1
    assert "export FAILED verification: onnxruntime batch 1: max |d lengths|" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []


def test_the_card_states_what_the_export_measured(exported):
    """The model card is written from the record and the files: each file's accuracy, size and sha256, the CPU."""
    import hashlib

    from timing import describe_cpu

    report = json.loads(report_path(exported).read_text())
    text = exported.with_suffix(".card.md").read_text()
    assert describe_cpu() in text and f"{S}x{S} images, 10 classes" in text
    for name, accuracy in [("fp32", report["test_accuracy_ort"]),
                           *((n, v["test_accuracy_ort"]) for n, v in report["variants"].items())]:
        path = exported if name == "fp32" else exported.with_name(f"capsnet-{name}.onnx")
        row = next(line for line in text.splitlines() if line.startswith(f"| `{path.name}` | {name} |"))
        assert f"| {accuracy:.2%} |" in row, row
        assert hashlib.sha256(path.read_bytes()).hexdigest()[:16] in row and f"{path.stat().st_size / 1e6:.1f} MB" in row


def test_verification_report_meets_tolerances(exported):
    """The tests' own model's export, at about 4 to 10x what it measures on 32x32 (lengths 4.8e-7, reconstruction
    6e-8, routing 3.7e-8; fp16's routing 2.7e-7, int8's 1.4e-5; the decoder 6e-8), within the export's own gate."""
    report = json.loads(report_path(exported).read_text())
    assert report["passed"] and report["digits"] == 200
    for batch in ("batch_1", "batch_7", "batch_256"):
        diffs = report["onnxruntime"][batch]
        assert diffs["max_abs_diff_lengths"] <= 2e-6
        assert diffs["max_abs_diff_reconstruction"] <= 1e-6
        assert diffs["argmax_agreement"] == 1.0
        assert diffs["max_abs_diff_routing_map"] <= 5e-7 and diffs["max_abs_diff_routing_types"] <= 5e-7
    assert report["onnx_reference"]["max_abs_diff_lengths"] <= 1e-6
    assert report["onnx_reference"]["max_abs_diff_routing_map"] <= 5e-7
    assert report["variants"]["fp16"]["against_torch"]["max_abs_diff_routing_map"] <= 2e-6
    assert report["variants"]["int8"]["against_torch"]["max_abs_diff_routing_map"] <= 5e-5
    assert report["decoder"]["max_abs_diff_moved_poses"] <= 1e-6


def test_the_routing_outputs_are_the_winners_coupling_coefficients(exported, own_run, mnist_root):
    """Recomputed here from PyTorch's routing (DigitCaps.route), not from CapsNet.explain: the winner's row of the
    last coupling coefficients, averaged over the 32 types (map) and the GRID x GRID positions (types), for fp32 and
    variants."""
    import onnxruntime as ort

    model, _ = load_weights(own_run / "checkpoint.safetensors")
    x = torch.from_numpy(own_digits(mnist_root, 64))
    with torch.no_grad():
        u = model.primary_caps(torch.relu(model.conv1(x)))
        v, c = model.digit_caps.route(model.digit_caps.predictions(u))
    winner = (v * v).sum(-1).argmax(1)
    c_win = c[torch.arange(64), winner].view(64, 32, GRID, GRID).numpy()
    for name, limit in (("fp32", 5e-7), ("fp16", 2e-6), ("int8", 5e-5)):  # ~10x what the tiny model measures
        session = ort.InferenceSession(str(variant_path(exported, name)), providers=["CPUExecutionProvider"])
        lengths, routing_map, types = session.run(["lengths", "routing_map", "routing_types"], {"image": x.numpy()})
        same = lengths.argmax(1) == winner.numpy()
        assert same.mean() >= 0.95
        assert np.abs(routing_map[same] - c_win[same].mean(1)).max() <= limit
        assert np.abs(types[same] - c_win[same].mean((2, 3))).max() <= limit


def test_the_decoder_graph_redraws_a_digit_from_any_pose(exported, own_run, mnist_root):
    """capsnet-decoder.onnx against the full model's own reconstruction (same pose), and against PyTorch's
    decoder for poses moved by up to 0.25; its metadata names the weights, and the fp32 file names it."""
    import onnxruntime as ort

    decoder_path = variant_path(exported, "decoder")
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert meta["decoder"] == "capsnet-decoder.onnx"
    decoder_meta = {p.key: p.value for p in onnx.load(str(decoder_path)).metadata_props}
    assert decoder_meta["variant"] == "decoder" and decoder_meta["source_sha256"] == meta["source_sha256"]
    decoder = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()] == ["pose", "label"]
    full = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = own_digits(mnist_root, 32)
    lengths, poses, recon = full.run(["lengths", "poses", "reconstruction"], {"image": x})
    label = lengths.argmax(1)
    pose = poses[np.arange(32), label]
    assert np.abs(decoder.run(None, {"pose": pose, "label": label})[0] - recon).max() < 1e-6  # 6e-8 measured
    moved = pose + np.linspace(-0.25, 0.25, 16, dtype=np.float32)
    model, _ = load_weights(own_run / "checkpoint.safetensors")
    with torch.no_grad():
        want = model.decode(torch.from_numpy(moved), torch.from_numpy(label)).numpy()
    got = decoder.run(None, {"pose": moved, "label": label})[0]
    assert np.abs(got - want).max() < 1e-6 and np.abs(got - recon).max() > 1e-3  # a tiny model moves little


def test_onnx_runs_at_any_batch_size(exported):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    for n in (1, 3, 300):
        lengths, poses, recon, routing_map, types = session.run(
            None, {"image": np.random.rand(n, 1, S, S).astype(np.float32)})
        assert lengths.shape == (n, 10) and poses.shape == (n, 10, 16) and recon.shape == (n, 1, S, S)
        assert routing_map.shape == (n, GRID, GRID) and types.shape == (n, 32)


def test_broadcast_routing_is_the_same_function(tiny_run, mnist_root):
    from export.broadcast import broadcast_copy

    model, _ = load_weights(tiny_run / "checkpoint.safetensors")
    x, _ = load_split("test", mnist_root, 16)
    with torch.no_grad():
        a, b = model(x), broadcast_copy(model)(x)
    for left, right in zip(a, b):
        assert torch.allclose(left, right, atol=1e-5)


def test_zero_capsules_give_zero_not_nan_after_export(tiny_run, tmp_path, mnist_root):
    """squash(0) = 0 must survive export: the exporter's optimizer drops `+ eps` for eps <= 1e-8.

    An int8 model rounds some primary capsules to exactly zero; with the epsilon dropped those became
    NaN and spread through routing to every output of the image (-2.4 accuracy points).
    """
    import onnxruntime as ort

    model, _ = load_weights(tiny_run / "checkpoint.safetensors")
    with torch.no_grad():  # capsule type 0 is channels [0, 8): make it exactly zero everywhere
        model.primary_caps.conv.weight[:8].zero_()
        model.primary_caps.conv.bias[:8].zero_()
    out = export_onnx(model, tmp_path / "zero.onnx")
    x = load_split("test", mnist_root, 8)[0]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = model.explain(x)
    for g, w in zip(got, want):
        assert np.isfinite(g).all()
        assert np.abs(g - w.numpy()).max() < 1e-4


@pytest.mark.skipif(emulator() is None and not native_avx2() and not REQUIRE_TOOLS,
                    reason="needs Debian's qemu-user (make setup)")
def test_seven_bit_int8_weights_mean_the_same_on_avx2_kernels_as_here(exported, mnist_root):
    """scripts/int8_range.py on the tests' own model: every recipe is made and run on this CPU's kernels and on the
    AVX2-only kernels (under QEMU, export/avx2.py). 8-bit u8 x s8 weights saturate there (the emulator does run
    the AVX2 kernels), every other recipe, the export's among them, gives the same lengths on both, as
    onnx.reference reads its graph."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("int8_range", ROOT / "scripts" / "int8_range.py")
    int8_range = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(int8_range)
    avx2_here = native_avx2()  # this CPU runs the AVX2 kernels itself: the saturation shows against the graph
    rows = int8_range.main(["--model", str(exported), "--digits", "50", "--emulated-digits", "16",
                            "--reference-digits", "16" if avx2_here else "2", "--calibration-digits", "100",
                            "--seconds", "0.1", "--data", str(mnist_root)])
    full, *rest = rows
    assert (full["reduce_range"], full["weights"]) == (False, "int8") and rest[0]["recipe"] == INT8.name
    saturated = full["max_abs_diff_against_graph"] if avx2_here else full["max_abs_diff_avx2"]
    assert saturated > 10 * int8_range.ROUNDING
    for row in rest:
        assert row["max_abs_diff_avx2"] <= int8_range.ROUNDING and row["labels_differ_avx2"] == 0, row
        assert row["max_abs_diff_against_graph"] <= int8_range.ROUNDING, row
