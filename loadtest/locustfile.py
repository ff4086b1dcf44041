"""Locust users that post real MNIST test digits to /classify and check every answer.

The digits and the labels ONNX Runtime gives them in-process come from $CAPSNET_DIGITS (an .npz
with `images` (N, 28, 28) float32 and `expected` (N,), written by `python -m loadtest`). Each
request carries $CAPSNET_LOAD_IMAGES digits (default 1) as $CAPSNET_LOAD_BODY: `octets` (raw
float32, Content-Type application/octet-stream) or `json` ({"images": ...}).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
from locust import FastHttpUser, between, task

_data = np.load(os.environ.get("CAPSNET_DIGITS", "runs/loadtest/digits.npz"))
IMAGES_PER_REQUEST = int(os.environ.get("CAPSNET_LOAD_IMAGES", "1"))
BODY = os.environ.get("CAPSNET_LOAD_BODY", "octets")


def encode(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    if BODY == "octets":
        return images.astype("<f4").tobytes(), {"Content-Type": "application/octet-stream"}
    return json.dumps({"images": images.tolist()}).encode(), {"Content-Type": "application/json"}


_starts = range(0, len(_data["images"]) - IMAGES_PER_REQUEST + 1, IMAGES_PER_REQUEST)
REQUESTS = [(*encode(_data["images"][i:i + IMAGES_PER_REQUEST]), _data["expected"][i:i + IMAGES_PER_REQUEST].tolist())
            for i in _starts]


class ClassifyUser(FastHttpUser):
    wait_time = between(0, 0)

    @task
    def classify(self) -> None:
        body, headers, expected = random.choice(REQUESTS)
        with self.client.post("/classify", data=body, headers=headers, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            answer = response.json()
            lengths = answer.get("lengths") or [[]]
            if answer.get("labels") != expected or len(lengths) != len(expected) or len(lengths[0]) != 10:
                response.failure(f"expected labels {expected}, got {str(answer)[:200]}")
