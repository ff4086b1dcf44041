"""Every CAPSNET_* setting is read once into one frozen Settings; a bad value names the variable and what it takes."""

from __future__ import annotations

import dataclasses

import pytest

from serving.settings import PROJECT, Settings, SettingsError, usable_cores


def test_the_defaults():
    s = Settings.from_env({})
    assert s.model == PROJECT / "models" / "capsnet-mnist.onnx" and s.device == "auto" and s.variant == "auto"
    assert s.workers == max(1, usable_cores() // 2)
    assert s.threads == (0 if s.workers == 1 else max(1, usable_cores() // s.workers))
    assert s.batcher == "ours" and not s.access_log and not s.tracing and s.metrics
    assert (s.drain_seconds, s.drain_timeout, s.read_timeout, s.max_connections) == (5.0, 10.0, 10.0, 1000)
    assert (s.grpc_port, s.grpc_host) == (8001, "127.0.0.1")


def test_each_setting_is_read():
    s = Settings.from_env({"CAPSNET_MODEL": "artifacts/capsnet.onnx", "CAPSNET_DEVICE": "cuda",
                           "CAPSNET_VARIANT": "fp16", "CAPSNET_WORKERS": "3", "CAPSNET_THREADS": "2",
                           "CAPSNET_BATCHER": "bentoml", "CAPSNET_ACCESS_LOG": "yes", "CAPSNET_TRACING": "ON",
                           "CAPSNET_METRICS": "off", "CAPSNET_DRAIN_SECONDS": "0", "CAPSNET_DRAIN_TIMEOUT": "2.5",
                           "CAPSNET_READ_TIMEOUT": "0.5", "CAPSNET_MAX_CONNECTIONS": "64", "CAPSNET_GRPC_PORT": "0",
                           "CAPSNET_GRPC_HOST": "0.0.0.0"})
    assert s == Settings(model=PROJECT / "artifacts" / "capsnet.onnx", device="cuda", variant="fp16", workers=3,
                         threads=2, batcher="bentoml", access_log=True, tracing=True, metrics=False,
                         drain_seconds=0.0, drain_timeout=2.5, read_timeout=0.5, max_connections=64, grpc_port=0,
                         grpc_host="0.0.0.0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 1  # type: ignore[misc]


def test_threads_divide_the_cores_among_the_workers():
    assert Settings.from_env({"CAPSNET_WORKERS": "1"}).threads == 0  # one worker: ONNX Runtime's own choice
    assert Settings.from_env({"CAPSNET_WORKERS": "2"}).threads == max(1, usable_cores() // 2)
    assert Settings.from_env({"CAPSNET_WORKERS": "2", "CAPSNET_THREADS": "0"}).threads == 0


@pytest.mark.parametrize("name, value, message", [
    ("WORKERS", "abc", "CAPSNET_WORKERS='abc': expected a whole number of 1 or more"),
    ("WORKERS", "0", "CAPSNET_WORKERS='0': expected a whole number of 1 or more"),
    ("THREADS", "-1", "CAPSNET_THREADS='-1': expected a whole number of 0 or more"),
    ("DEVICE", "tpu", "CAPSNET_DEVICE='tpu': expected one of auto, cpu, cuda"),
    ("VARIANT", "int4", "CAPSNET_VARIANT='int4': expected auto or one of fp32, int8, fp16"),
    ("BATCHER", "fastest", "CAPSNET_BATCHER must be one of ours, bentoml; got 'fastest'"),
    ("METRICS", "maybe", "CAPSNET_METRICS='maybe': expected 1 or 0"),
    ("DRAIN_SECONDS", "-1", "CAPSNET_DRAIN_SECONDS='-1': expected a number of seconds, 0 or more"),
    ("DRAIN_TIMEOUT", "soon", "CAPSNET_DRAIN_TIMEOUT='soon': expected a number of seconds, 0 or more"),
    ("READ_TIMEOUT", "0", "CAPSNET_READ_TIMEOUT='0': expected a number of seconds, 0.1 or more"),
    ("READ_TIMEOUT", "inf", "CAPSNET_READ_TIMEOUT='inf': expected a number of seconds, 0.1 or more"),
    ("MAX_CONNECTIONS", "0", "CAPSNET_MAX_CONNECTIONS='0': expected a whole number of 1 or more"),
    ("GRPC_PORT", "70000", "CAPSNET_GRPC_PORT='70000': expected a port number, 1 to 65535 (0: off)"),
    ("GRPC_PORT", "grpc", "CAPSNET_GRPC_PORT='grpc': expected a port number"),
])
def test_a_bad_value_names_the_variable_and_what_it_takes(name, value, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({f"CAPSNET_{name}": value})
    assert str(err.value).startswith(message)


def test_the_model_may_be_named_by_its_folder(tmp_path):
    """CAPSNET_MODEL takes the fp32 file or the folder `python -m export` wrote it in; a folder must hold one."""
    assert Settings.from_env({"CAPSNET_MODEL": "models"}).model == PROJECT / "models" / "capsnet-mnist.onnx"
    for name in ("mine.onnx", "mine-int8.onnx", "mine-fp16.onnx", "mine-decoder.onnx"):
        (tmp_path / name).write_bytes(b"")
    assert Settings.from_env({"CAPSNET_MODEL": str(tmp_path)}).model == tmp_path / "mine.onnx"
    (tmp_path / "other.onnx").write_bytes(b"")
    with pytest.raises(SettingsError, match=r"a folder must hold one fp32 .onnx file .* found \['mine.onnx', 'other.onnx'\]"):
        Settings.from_env({"CAPSNET_MODEL": str(tmp_path)})


def test_the_token_from_its_setting_or_a_mounted_file(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("from-a-secret\n")  # a Secret mounted as a file often ends in a newline
    assert Settings.from_env({"CAPSNET_API_TOKEN_FILE": str(secret)}).api_token == "from-a-secret"
    assert Settings.from_env({"CAPSNET_API_TOKEN": "given"}).api_token == "given"
    assert "given" not in repr(Settings.from_env({"CAPSNET_API_TOKEN": "given"}))  # never in a log
    (tmp_path / "empty").write_text("\n")
    for env, message in (({"CAPSNET_API_TOKEN": "a", "CAPSNET_API_TOKEN_FILE": str(secret)}, "are both set"),
                         ({"CAPSNET_API_TOKEN_FILE": str(tmp_path / "none")}, "cannot read it"),
                         ({"CAPSNET_API_TOKEN_FILE": str(tmp_path / "empty")}, "the file is empty"),
                         ({"CAPSNET_API_TOKEN": "two words"}, "one word of printable characters")):
        with pytest.raises(SettingsError) as err:
            Settings.from_env(env)
        assert message in str(err.value)
