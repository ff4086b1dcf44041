"""KServe's Python model server (`kserve` on PyPI) with a custom kserve.Model, as its docs write one: the Open
Inference Protocol over HTTP (JSON or binary tensors, POST /v2/models/capsnet/infer) and gRPC, one uvicorn worker,
no batching (KServe batches in its agent, a sidecar in front of the server on Kubernetes, not in this server)."""

from __future__ import annotations

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.utils import generate_uuid

from loadtest.peers.common import OUTPUT, arguments, free_port, lengths, session


class CapsNet(Model):
    def __init__(self, model: str, threads: int) -> None:
        super().__init__("capsnet")
        self.sess = session(model, threads)
        self.ready = True

    def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
        out = lengths(self.sess, payload.inputs[0].as_numpy())
        output = InferOutput(name=OUTPUT, shape=list(out.shape), datatype="FP32")
        output.set_data_from_numpy(out, binary_data=False)  # the REST encoder re-encodes it as the request asks
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name, infer_outputs=[output],
                             use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    grpc_port = args.grpc_port or free_port()
    ModelServer(http_port=args.port, grpc_port=grpc_port, workers=1, enable_grpc=True,
                enable_docs_url=False).start([CapsNet(args.model, args.threads)])


if __name__ == "__main__":
    main()
