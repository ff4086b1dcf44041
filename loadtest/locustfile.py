"""Locust users that post real MNIST test digits to /classify and check every answer.

The digits and the labels ONNX Runtime gives them in-process come from $CAPSNET_DIGITS
(an .npz with `images` (N, 28, 28) float32 and `expected` (N,) written by `python -m loadtest`).
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
from locust import FastHttpUser, between, task

_data = np.load(os.environ.get("CAPSNET_DIGITS", "runs/loadtest/digits.npz"))
BODIES = [json.dumps({"images": [image.tolist()]}) for image in _data["images"]]
EXPECTED = [int(label) for label in _data["expected"]]
HEADERS = {"Content-Type": "application/json"}


class ClassifyUser(FastHttpUser):
    wait_time = between(0, 0)

    @task
    def classify(self) -> None:
        i = random.randrange(len(BODIES))
        with self.client.post("/classify", data=BODIES[i], headers=HEADERS, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            answer = response.json()
            if answer.get("labels") != [EXPECTED[i]] or len(answer.get("lengths", [[]])[0]) != 10:
                response.failure(f"digit {i}: expected label {EXPECTED[i]}, got {str(answer)[:200]}")
