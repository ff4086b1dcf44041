"""LitServe with its batching (max_batch_size, batch_timeout 0). Native format: JSON {"images": ...} on POST /predict."""

from __future__ import annotations

import litserve as ls
import numpy as np

from loadtest.peers.common import MAX_BATCH, arguments, images_from_json, lengths, session, split


class CapsNetAPI(ls.LitAPI):
    def __init__(self, model: str, threads: int) -> None:
        super().__init__(max_batch_size=MAX_BATCH, batch_timeout=0.0)
        self.model, self.threads, self.sizes = model, threads, []

    def setup(self, device: str) -> None:
        self.sess = session(self.model, self.threads)

    def decode_request(self, request: dict) -> np.ndarray:
        return images_from_json(request)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        self.sizes = [len(x) for x in inputs]
        return np.concatenate(inputs)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return lengths(self.sess, images)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return split(output, self.sizes)

    def encode_response(self, output: np.ndarray) -> dict:
        return {"labels": output.argmax(1).tolist(), "lengths": output.tolist()}


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    server = ls.LitServer(CapsNetAPI(args.model, args.threads), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
