"""The Triton model repository (models/triton/, written by `python -m export.triton`) parsed by Triton's own
model-config protobuf (shipped in tritonclient) and matched to the ONNX file it serves."""

from __future__ import annotations


from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.triton import MAX_BATCH_SIZE, config_text
from serving.limits import MAX_BATCH
from serving.v2 import signature as served_signature
from serving.runtime import CapsNetRuntime
from tests.conftest import PUBLISHED_ONNX

REPOSITORY = PUBLISHED_ONNX.parent / "triton" / "capsnet"


def parsed() -> model_config_pb2.ModelConfig:
    return text_format.Parse((REPOSITORY / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def test_the_config_parses_with_tritons_schema_and_matches_the_onnx_file():
    config = parsed()
    assert (config.name, config.backend, config.max_batch_size) == ("capsnet", "onnxruntime", MAX_BATCH)
    assert MAX_BATCH_SIZE == MAX_BATCH and config.HasField("dynamic_batching")
    signature = served_signature(CapsNetRuntime(PUBLISHED_ONNX, device="cpu", variant="fp32"))

    def declared(tensors) -> list[dict]:
        return [{"name": t.name, "datatype": model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_"),
                 "shape": [-1, *t.dims]} for t in tensors]

    assert declared(config.input) == signature["inputs"]
    assert declared(config.output) == signature["outputs"]


def test_version_1_is_the_published_fp32_file_and_the_config_is_current():
    model = REPOSITORY / "1" / "model.onnx"
    assert model.is_symlink() and model.resolve() == PUBLISHED_ONNX.resolve()
    assert (REPOSITORY / "config.pbtxt").read_text() == config_text(PUBLISHED_ONNX)  # what export writes today
