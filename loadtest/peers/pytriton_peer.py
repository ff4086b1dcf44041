"""NVIDIA PyTriton: the real tritonserver (its HTTP front end, v2 protocol, dynamic batcher) calling ONNX Runtime in
Python. Native format: the Open Inference Protocol, JSON or binary tensors, POST /v2/models/capsnet/infer."""

from __future__ import annotations

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from loadtest.peers.common import MAX_BATCH, arguments, free_port, lengths, session


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    sess = session(args.model, args.threads)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"lengths": lengths(sess, image)}

    config = TritonConfig(http_address="127.0.0.1", http_port=args.port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port or free_port(), metrics_port=free_port(), log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(model_name="capsnet", infer_func=infer,
                    inputs=[Tensor(name="image", dtype=np.float32, shape=(1, 28, 28))],
                    outputs=[Tensor(name="lengths", dtype=np.float32, shape=(10,))],
                    config=ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher()))
        triton.serve()


if __name__ == "__main__":
    main()
