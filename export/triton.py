"""A Triton Inference Server model repository for an exported graph: `python -m export.triton --help`.

    <repository>/capsnet/config.pbtxt   Triton's ONNX Runtime backend, dynamic batching, the graph's true dims
    <repository>/capsnet/1/model.onnx   a relative symbolic link to the fp32 file (Triton follows it)

`python -m export` writes one beside what it exports (artifacts/triton/); the published model's is
models/triton/. Serve it with `tritonserver --model-repository models/triton` (models/ONNX.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import onnx

MODEL = "capsnet"
MAX_BATCH_SIZE = 256  # images per request, as the service's own cap (serving/inputs.py MAX_BATCH)
ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
                  onnx.TensorProto.INT64: "TYPE_INT64"}


def tensors(values: list[onnx.ValueInfoProto]) -> list[tuple[str, str, list[int]]]:
    """(name, Triton datatype, dims without the batch axis) of a graph's inputs or outputs."""
    found = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        found.append((v.name, ONNX_TO_TRITON[t.elem_type], dims[1:]))
    return found


def config_text(onnx_path: Path) -> str:
    """config.pbtxt for the graph in onnx_path (its inputs and outputs read from the file)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def block(kind: str, items: list[tuple[str, str, list[int]]]) -> str:
        entries = ",\n".join(f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
                             for name, dtype, dims in items)
        return f"{kind} [\n{entries}\n]\n"

    return (f"# Written by `python -m export.triton` from {onnx_path.name}: the graph's own inputs and outputs.\n"
            f'name: "{MODEL}"\nbackend: "onnxruntime"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
            + block("input", tensors(list(graph.input))) + block("output", tensors(list(graph.output)))
            + "dynamic_batching { }\n")


def write_repository(onnx_path: Path, repository: Path) -> Path:
    """Write <repository>/capsnet/{config.pbtxt, 1/model.onnx -> onnx_path}; returns the model's folder."""
    folder = repository / MODEL
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_text(onnx_path))
    link = folder / "1" / "model.onnx"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(onnx_path.resolve(), link.parent.resolve()))
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.triton", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("onnx", type=Path, nargs="?", default=Path("models/capsnet-mnist.onnx"), help="the fp32 ONNX file")
    p.add_argument("--repository", type=Path, default=None, help="the repository folder (default: triton/ beside the file)")
    args = p.parse_args(argv)
    if not args.onnx.exists():
        p.error(f"{args.onnx}: no such file (run `make export`)")
    folder = write_repository(args.onnx, args.repository or args.onnx.parent / "triton")
    print(f"wrote {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'} -> {args.onnx}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
