from pathlib import Path

import numpy as np
import pytest

from export.artifact import variant_path
from mnist import read_split
from serving.errors import InvalidInput, TooLarge
from serving.routes import validate_images
from serving.runtime import CapsNetRuntime, ModelError
from serving.sessions import DeviceError, create_session
from serving.settings import SettingsError, model_path

ROOT = Path(__file__).resolve().parents[1]


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


def test_runtime_predicts_the_published_models_labels(served_onnx, mnist_root):
    """fp32 through the runtime on 256 real digits: the graph's true labels but one at most (256 of 256 measured),
    the labels are the longest capsules, the reconstructions are 28x28 in [0, 1]."""
    runtime = CapsNetRuntime(served_onnx, device="cpu", variant="fp32")
    x, y = read_split("test", mnist_root, 256)
    prediction = runtime.predict(x[:, None])
    assert (prediction.labels != y).sum() <= 1
    assert np.array_equal(prediction.labels, prediction.lengths.argmax(1))
    assert prediction.reconstructions.shape == (256, 28, 28)
    assert prediction.reconstructions.min() >= 0 and prediction.reconstructions.max() <= 1
    info = runtime.describe()
    assert info["providers"] == ["CPUExecutionProvider"] and info["routing_iterations"] == 3 and info["opset"] == 18


def test_cpu_default_is_int8_and_every_variant_agrees_with_fp32(served_onnx, mnist_root):
    """On 512 real digits, measured on the published model: int8 flips no label and moves lengths by at most 0.064,
    fp16 flips none and moves them by at most 3.6e-4. Held to twice that."""
    x = read_split("test", mnist_root, 512)[0][:, None]
    auto = CapsNetRuntime(served_onnx, device="cpu", variant="auto")
    assert auto.variant == "int8" and auto.model_path == variant_path(served_onnx, "int8")
    info = auto.describe()
    assert info["variant"] == "int8" and info["model_file"] == "capsnet-mnist-int8.onnx" and info["warnings"] == []
    fp32 = CapsNetRuntime(served_onnx, device="cpu", variant="fp32").predict(x)
    bounds = {"int8": (0, 0.13), "fp16": (0, 8e-4)}
    for name, (flips, lengths) in bounds.items():
        got = CapsNetRuntime(served_onnx, device="cpu", variant=name).predict(x)
        assert (got.labels != fp32.labels).sum() <= flips, name
        assert np.abs(got.lengths - fp32.lengths).max() < lengths, name


def copy_model(served_onnx, folder, variants=("int8", "fp16")):
    import shutil

    for name in ("fp32", *variants):
        shutil.copy(variant_path(served_onnx, name), folder)
    return folder / served_onnx.name


def edit_metadata(path, **changes):
    import onnx

    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(model, str(path))


def test_auto_falls_back_to_fp32_when_the_variant_missed_its_bar(served_onnx, tmp_path):
    fp32 = copy_model(served_onnx, tmp_path)
    edit_metadata(tmp_path / "capsnet-mnist-int8.onnx", meets_accuracy_bar="false")
    auto = CapsNetRuntime(fp32, device="cpu")
    assert auto.variant == "fp32" and "capsnet-mnist-int8.onnx missed its accuracy bar" in auto.describe()["warnings"][0]
    assert CapsNetRuntime(fp32, device="cpu", variant="int8").variant == "int8"  # asked for
    (tmp_path / "capsnet-mnist-int8.onnx").unlink()
    missing = CapsNetRuntime(fp32, device="cpu")
    assert missing.variant == "fp32" and "no int8 variant" in missing.warnings[0]
    with pytest.raises(FileNotFoundError, match="CAPSNET_VARIANT=int8: .*names no existing int8 variant"):
        CapsNetRuntime(fp32, device="cpu", variant="int8")
    with pytest.raises(SettingsError, match="expected auto or one of fp32, int8, fp16"):
        CapsNetRuntime(fp32, device="cpu", variant="int4")


def test_a_variant_of_other_weights_is_never_served(served_onnx, tmp_path, caplog):
    """A stale int8 file (made from other weights) beside the fp32 graph: auto serves fp32 and says why."""
    fp32 = copy_model(served_onnx, tmp_path)
    edit_metadata(tmp_path / "capsnet-mnist-int8.onnx", source_sha256="0" * 64)
    with caplog.at_level("WARNING", logger="capsnet"):
        auto = CapsNetRuntime(fp32, device="cpu")
    assert auto.variant == "fp32" and auto.model_path == fp32
    assert "made from other weights" in auto.describe()["warnings"][0] and "stale" in caplog.text
    with pytest.raises(ModelError, match="CAPSNET_VARIANT=int8: .*other weights"):
        CapsNetRuntime(fp32, device="cpu", variant="int8")
    assert CapsNetRuntime(fp32, device="cpu", variant="fp16").variant == "fp16"  # fp16 is current


def test_variants_are_only_those_the_fp32_graph_names(served_onnx, tmp_path):
    """An fp32 graph exported without variants serves fp32, whatever files lie beside it."""
    fp32 = copy_model(served_onnx, tmp_path)
    edit_metadata(fp32, variants="{}")
    assert CapsNetRuntime(fp32, device="cpu").variant == "fp32"


def test_auto_with_a_cuda_provider_that_does_not_start_serves_the_cpu_variant(served_onnx, monkeypatch):
    """onnxruntime-gpu lists CUDAExecutionProvider here, but it cannot start: auto must not run fp16 on the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build does not list the CUDA provider")
    from pathlib import Path

    if Path("/dev/nvidiactl").exists():
        pytest.skip("a GPU is present here")
    monkeypatch.setattr("serving.sessions._gpu_present", lambda: True)  # as on a GPU host whose CUDA is broken
    runtime = CapsNetRuntime(served_onnx, device="auto")
    assert runtime.variant == "int8" and runtime.providers == ["CPUExecutionProvider"]
    assert "did not start; serving on the CPU" in runtime.describe()["warnings"][0]


def test_a_graph_without_the_needed_outputs_is_refused_at_start(served_onnx, tmp_path):
    import onnx

    model = onnx.load(str(served_onnx))
    model.graph.output[0].name = "scores"  # the graph still runs, but has no `lengths`
    for node in model.graph.node:
        node.output[:] = ["scores" if o == "lengths" else o for o in node.output]
        node.input[:] = ["scores" if i == "lengths" else i for i in node.input]
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "odd.onnx"))
    with pytest.raises(ModelError, match="no output lengths"):
        CapsNetRuntime(tmp_path / "odd.onnx", device="cpu")


def test_cuda_without_a_gpu_stops_instead_of_falling_back(served_onnx):
    from pathlib import Path

    if Path("/dev/nvidiactl").exists():
        pytest.skip("a GPU is present here")
    with pytest.raises(DeviceError, match="CUDA"):
        create_session(served_onnx, "cuda")


def test_unknown_device_and_missing_model_are_clear(tmp_path):
    with pytest.raises(SettingsError, match="expected one of auto, cpu, cuda"):
        create_session(tmp_path / "x.onnx", "tpu")
    with pytest.raises(FileNotFoundError, match="make export"):
        create_session(tmp_path / "x.onnx", "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("variant, tolerance", [("fp32", 1e-3), ("fp16", 2e-3)])
def test_cuda_device_uses_the_cuda_provider_and_answers_as_the_cpu(served_onnx, mnist_root, variant, tolerance):
    """The same variant on both devices, on 256 real digits. Not yet measured on a GPU: fp32 allows TF32 in
    CUDA's convolutions (1e-3), fp16 the CPU's and CUDA's different half-precision kernels (2e-3)."""
    runtime = CapsNetRuntime(served_onnx, device="cuda", variant=variant)
    assert runtime.providers[0] == "CUDAExecutionProvider" and runtime.variant == variant
    x = read_split("test", mnist_root, 256)[0][:, None]
    cpu = CapsNetRuntime(served_onnx, device="cpu", variant=variant).predict(x)
    gpu = runtime.predict(x)
    assert np.array_equal(cpu.labels, gpu.labels)
    assert np.abs(cpu.lengths - gpu.lengths).max() < tolerance


def test_a_relative_capsnet_model_is_taken_from_the_project_not_the_callers_folder(tmp_path, monkeypatch):
    """`bentoml serve <bento>` runs the start-up check in the caller's folder and the workers in the Bento's
    src/: both must resolve CAPSNET_MODEL to the same file."""
    monkeypatch.chdir(tmp_path)
    assert model_path("artifacts/capsnet.onnx") == ROOT / "artifacts" / "capsnet.onnx"
    assert model_path(str(tmp_path / "elsewhere.onnx")) == tmp_path / "elsewhere.onnx"
    assert model_path("") == ROOT / "models" / "capsnet-mnist.onnx"


def test_the_thread_setting_takes_effect(served_onnx):
    """CAPSNET_THREADS reaches ONNX Runtime: a session with 4 intra-op threads starts 3 pool threads beside the
    caller's (and says so); with 1, none. (The container is started with CAPSNET_THREADS=1, and its /metadata says
    1 thread per worker: tests/test_container.py.)"""
    import psutil

    me = psutil.Process()
    counts = {}
    for threads in (1, 4):
        before = me.num_threads()
        runtime = CapsNetRuntime(served_onnx, device="cpu", threads=threads, variant="fp32")
        counts[threads] = me.num_threads() - before
        assert runtime.session.get_session_options().intra_op_num_threads == threads
        assert runtime.describe()["threads_per_worker"] == threads
        del runtime
    assert counts[4] - counts[1] == 3, counts
