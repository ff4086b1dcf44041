"""What a request's images must be, checked before anything runs: the checks and their errors.

InvalidInput is a malformed request (HTTP 400), TooLarge one over a limit (HTTP 413); each message
says what is wrong. serving/routes.py maps them to statuses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_SIZE = 28
MAX_BATCH = 256  # images per request
MAX_EXPLAIN = 16  # images per /explain request
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 4  # one raw float32 image


class InvalidInput(ValueError):
    """The request's images are malformed; the message says how (HTTP 400)."""


class TooLarge(InvalidInput):
    """The request is over a size limit (HTTP 413)."""


def validate_images(images: Any, max_batch: int = MAX_BATCH) -> np.ndarray:
    """A JSON array of N 28x28 (or 1x28x28) images in [0, 1] -> float32 (N, 1, 28, 28); else InvalidInput."""
    if not isinstance(images, list):
        raise InvalidInput(f"'images' must be an array of N images of {IMAGE_SIZE}x{IMAGE_SIZE} numbers,"
                           f" got {type(images).__name__}")
    if not images:
        raise InvalidInput("'images' is empty: send at least one image")
    if len(images) > max_batch:
        raise TooLarge(f"'images' holds {len(images)} images; at most {max_batch} per request")
    try:
        array = np.array(images)
    except (ValueError, TypeError):
        raise InvalidInput("'images' is ragged: every image must be 28 rows of 28 numbers") from None
    if array.dtype.kind not in "iuf":
        raise InvalidInput("'images' must hold only numbers (no strings, booleans, nulls or objects)")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InvalidInput(f"each image must be {IMAGE_SIZE}x{IMAGE_SIZE} (or 1x{IMAGE_SIZE}x{IMAGE_SIZE});"
                           f" got images of shape {list(array.shape[1:])}")
    return check_pixels(array.astype(np.float32))[:, None]


def check_pixels(array: np.ndarray) -> np.ndarray:
    """array itself when every value is finite and in [0, 1]; else InvalidInput."""
    low, high = array.min(), array.max()  # NaN propagates into both, and Infinity is past 1 or below 0
    if not (low >= 0.0 and high <= 1.0):
        if not np.isfinite(array).all():
            raise InvalidInput("'images' holds NaN or Infinity")
        raise InvalidInput(f"pixel values must lie in [0, 1]; got [{low:.4g}, {high:.4g}]")
    return array


def parse_octets(body: bytes, max_batch: int = MAX_BATCH) -> np.ndarray:
    """An application/octet-stream body: N x 28 x 28 float32 little-endian in [0, 1] -> (N, 1, 28, 28)."""
    if not body or len(body) % IMAGE_BYTES:
        raise InvalidInput(f"an application/octet-stream body must be N x {IMAGE_SIZE} x {IMAGE_SIZE} float32"
                           f" (a multiple of {IMAGE_BYTES} bytes); got {len(body)} bytes")
    if len(body) // IMAGE_BYTES > max_batch:
        raise TooLarge(f"the body holds {len(body) // IMAGE_BYTES} images; at most {max_batch} per request")
    return check_pixels(np.frombuffer(body, dtype="<f4").reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE))
