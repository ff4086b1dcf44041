"""BentoML's own batchable API (adaptive batching), the way its documentation writes a service: a numpy array in,
a numpy array out. Native format: JSON {"images": ...} on POST /classify (`bentoml serve loadtest.peers.bentoml_peer:Peer`)."""

from __future__ import annotations

import os

import bentoml
import numpy as np

from loadtest.peers.common import MAX_BATCH, lengths, session


@bentoml.service(workers=1, traffic={"max_concurrency": 128})
class Peer:
    def __init__(self) -> None:
        self.sess = session(os.environ["PEER_MODEL"], int(os.environ.get("PEER_THREADS", "1")))

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=1000)
    def classify(self, images: np.ndarray) -> np.ndarray:
        return lengths(self.sess, images.astype(np.float32).reshape(-1, 1, 28, 28))
