"""Ray Serve with @serve.batch. Native format: whatever the deployment reads from Starlette's request: here JSON
{"images": ...} or raw float32 (Content-Type: application/octet-stream) on POST /classify."""

from __future__ import annotations

import time

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

from loadtest.peers.common import MAX_BATCH, arguments, images_from_json, images_from_octets, lengths, session, split


@serve.deployment(max_ongoing_requests=MAX_BATCH)
class CapsNet:
    def __init__(self, model: str, threads: int) -> None:
        self.sess = session(model, threads)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.0)
    async def run(self, requests: list[np.ndarray]) -> list[np.ndarray]:
        return split(lengths(self.sess, np.concatenate(requests)), [len(r) for r in requests])

    async def __call__(self, request: Request) -> dict:
        body = await request.body()
        raw = request.headers.get("content-type", "").startswith("application/octet-stream")
        out = await self.run(images_from_octets(body) if raw else images_from_json(await request.json()))
        return {"labels": out.argmax(1).tolist(), "lengths": out.tolist()}


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(CapsNet.bind(args.model, args.threads), route_prefix="/classify")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
