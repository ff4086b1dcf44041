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


def test_each_setting_is_read():
    s = Settings.from_env({"CAPSNET_MODEL": "artifacts/capsnet.onnx", "CAPSNET_DEVICE": "cuda",
                           "CAPSNET_VARIANT": "fp16", "CAPSNET_WORKERS": "3", "CAPSNET_THREADS": "2",
                           "CAPSNET_BATCHER": "bentoml", "CAPSNET_ACCESS_LOG": "yes", "CAPSNET_TRACING": "ON",
                           "CAPSNET_METRICS": "off"})
    assert s == Settings(model=PROJECT / "artifacts" / "capsnet.onnx", device="cuda", variant="fp16", workers=3,
                         threads=2, batcher="bentoml", access_log=True, tracing=True, metrics=False)
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
])
def test_a_bad_value_names_the_variable_and_what_it_takes(name, value, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({f"CAPSNET_{name}": value})
    assert str(err.value).startswith(message)
