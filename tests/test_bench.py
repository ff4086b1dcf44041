import json

from export.bench import main
from tests.conftest import PUBLISHED


def test_bench_times_every_engine_and_writes_json_and_plot(served_onnx, tiny_run, tmp_path, mnist_root):
    weights = PUBLISHED if PUBLISHED.exists() else tiny_run / "checkpoint.safetensors"
    report = main(["--weights", str(weights), "--onnx", str(served_onnx), "--batches", "1", "4", "--repeats", "1",
                   "--data", str(mnist_root), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["images_per_s"] == report["images_per_s"]
    assert set(saved["images_per_s"]) == {"pytorch-eager", "ort-fp32", "ort-fp32-optbasic", "ort-fp32-broadcast"}
    assert all(v > 0 for row in saved["images_per_s"].values() for v in row.values())
    counts = saved["onnx_node_counts"]
    assert counts["fp32"].get("MatMul", 0) > counts["fp32-broadcast"].get("MatMul", 0)
    assert (tmp_path / "bench.png").stat().st_size > 5000
