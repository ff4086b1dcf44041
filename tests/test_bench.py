import json

from export.bench import main
from tests.conftest import PUBLISHED


def test_bench_times_every_engine_and_writes_json_and_plot(served_onnx, tiny_run, tmp_path, mnist_root):
    weights = PUBLISHED if PUBLISHED.exists() else tiny_run / "checkpoint.safetensors"
    report = main(["--weights", str(weights), "--onnx", str(served_onnx), "--batches", "1", "4", "--repeats", "1",
                   "--data", str(mnist_root), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["images_per_s"] == report["images_per_s"]
    assert set(saved["images_per_s"]) == {"pytorch-eager", "ort-fp32", "ort-fp32-optbasic", "ort-int8",
                                          "ort-fp32-broadcast"}
    assert all(v > 0 for row in saved["images_per_s"].values() for v in row.values())
    counts = saved["onnx_node_counts"]
    assert counts["fp32"].get("MatMul", 0) > counts["fp32-broadcast"].get("MatMul", 0)
    assert (tmp_path / "bench.png").stat().st_size > 5000
    assert set(saved["target_ratios"]) == set()  # batch 64 was not timed: no target ratio to report
    routing = saved["routing_outputs_int8_images_per_s"]
    assert list(routing) == ["graph without routing outputs", "classify's outputs, fetched only",
                             "classify's outputs, whole graph run (the service)", "every output (/explain)"]
    assert all(set(row) == {"1", "64"} and min(row.values()) > 0 for row in routing.values())
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["capsnet-broadcast.onnx"]  # the cut graph is removed


def test_iobinding_runs_the_same_graph(served_onnx, mnist_root):
    """The GPU engines bind input and output to the device; on the CPU the same code must give the same answer."""
    import numpy as np
    import onnxruntime as ort

    from export.bench import ort_iobinding
    from training.data import load_split

    x = load_split("test", mnist_root, 8)[0].numpy()
    session = ort.InferenceSession(str(served_onnx), providers=["CPUExecutionProvider"])
    run = ort_iobinding(session, "cpu")(x)
    (lengths,) = run()
    assert np.allclose(lengths.numpy(), session.run(["lengths"], {"image": x})[0], atol=1e-6)
