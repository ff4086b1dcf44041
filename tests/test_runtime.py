import numpy as np
import pytest

from serving.runtime import (CapsNetRuntime, DeviceError, InvalidInput, TooLarge, create_session, validate_images,
                             variant_path)
from training.data import load_split


def image(value=0.5):
    return [[value] * 28 for _ in range(28)]


@pytest.mark.parametrize("images, message", [
    ("not a list", "must be an array"),
    ([], "empty"),
    ([[1, 2]], "28x28"),
    ([[[0.1] * 784]], "28x28"),  # reshapeable into 28x28, still refused
    ([[[0.1] * 28] * 27], "28x28"),
    ([image(), [[0.1] * 28] * 27], "ragged"),
    ([[["a"] * 28] * 28], "only numbers"),
    ([[[None] * 28] * 28], "only numbers"),
    ([[[True] * 28] * 28], "only numbers"),
    ([image(float("nan"))], "NaN"),
    ([image(float("inf"))], "NaN or Infinity"),
    ([image(1.5)], "in \\[0, 1\\]"),
    ([image(-0.1)], "in \\[0, 1\\]"),
])
def test_bad_images_are_refused_with_a_reason(images, message):
    with pytest.raises(InvalidInput, match=message):
        validate_images(images)


def test_batch_cap_is_too_large_not_bad():
    with pytest.raises(TooLarge, match="at most 256"):
        validate_images([image()] * 257)


def test_good_images_in_both_layouts():
    a = validate_images([image(0.25), image(1)])
    b = validate_images([[image(0.25)], [image(1)]])
    assert a.shape == (2, 1, 28, 28) and a.dtype == np.float32
    assert np.array_equal(a, b) and a[0, 0, 3, 3] == 0.25
    assert validate_images([[[0] * 28] * 28]).dtype == np.float32  # integers 0 and 1 are fine


def test_runtime_predicts_like_the_exported_graph(served_onnx, mnist_root):
    runtime = CapsNetRuntime(served_onnx, device="cpu")
    x, y = load_split("test", mnist_root, 64)
    prediction = runtime.predict(x.numpy())
    assert prediction.labels.shape == (64,) and prediction.reconstructions.shape == (64, 28, 28)
    assert np.array_equal(prediction.labels, prediction.lengths.argmax(1))
    info = runtime.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["routing_iterations"] == 3
    assert info["source_sha256"] and info["opset"] == 18


def test_cpu_default_is_int8_and_every_variant_agrees_with_fp32(served_onnx, mnist_root):
    x = load_split("test", mnist_root, 512)[0].numpy()
    auto = CapsNetRuntime(served_onnx, device="cpu", variant="auto")
    assert auto.variant == "int8" and auto.model_path == variant_path(served_onnx, "int8")
    info = auto.describe()
    assert info["variant"] == "int8" and info["model_file"] == "capsnet-int8.onnx"
    assert 0 <= info["accuracy_loss_points"] <= 0.1
    fp32 = CapsNetRuntime(served_onnx, device="cpu", variant="fp32").predict(x)
    for name in ("int8", "fp16"):
        got = CapsNetRuntime(served_onnx, device="cpu", variant=name).predict(x)
        assert (got.labels == fp32.labels).mean() >= 0.99
        assert np.abs(got.lengths - fp32.lengths).max() < (0.2 if name == "int8" else 0.01)


def test_auto_falls_back_to_fp32_when_the_variant_missed_its_bar(served_onnx, tmp_path):
    import shutil

    import onnx

    shutil.copy(served_onnx, tmp_path / "capsnet.onnx")
    int8 = onnx.load(str(variant_path(served_onnx, "int8")))
    for prop in int8.metadata_props:
        if prop.key == "meets_accuracy_bar":
            prop.value = "false"
    onnx.save(int8, str(tmp_path / "capsnet-int8.onnx"))
    assert CapsNetRuntime(tmp_path / "capsnet.onnx", device="cpu").variant == "fp32"
    assert CapsNetRuntime(tmp_path / "capsnet.onnx", device="cpu", variant="int8").variant == "int8"  # asked for
    (tmp_path / "capsnet-int8.onnx").unlink()
    assert CapsNetRuntime(tmp_path / "capsnet.onnx", device="cpu").variant == "fp32"
    with pytest.raises(FileNotFoundError, match="CAPSNET_VARIANT=int8: .*capsnet-int8.onnx does not exist"):
        CapsNetRuntime(tmp_path / "capsnet.onnx", device="cpu", variant="int8")
    with pytest.raises(ValueError, match="expected auto or one of fp32, int8, fp16"):
        CapsNetRuntime(tmp_path / "capsnet.onnx", device="cpu", variant="int4")


def test_cuda_without_a_gpu_stops_instead_of_falling_back(served_onnx):
    from pathlib import Path

    if Path("/dev/nvidiactl").exists():
        pytest.skip("a GPU is present here")
    with pytest.raises(DeviceError, match="CUDA"):
        create_session(served_onnx, "cuda")


def test_unknown_device_and_missing_model_are_clear(tmp_path):
    with pytest.raises(DeviceError, match="expected one of auto, cpu, cuda"):
        create_session(tmp_path / "x.onnx", "tpu")
    with pytest.raises(FileNotFoundError, match="make export"):
        create_session(tmp_path / "x.onnx", "cpu")


@pytest.mark.gpu
def test_cuda_device_uses_the_cuda_provider(served_onnx, mnist_root):
    runtime = CapsNetRuntime(served_onnx, device="cuda")
    assert runtime.providers[0] == "CUDAExecutionProvider"
    assert runtime.describe()["providers"][0] == "CUDAExecutionProvider"
    x, _ = load_split("test", mnist_root, 256)
    cpu = CapsNetRuntime(served_onnx, device="cpu").predict(x.numpy())
    gpu = runtime.predict(x.numpy())
    assert np.array_equal(cpu.labels, gpu.labels)
    assert np.abs(cpu.lengths - gpu.lengths).max() < 1e-3
