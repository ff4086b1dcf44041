"""What a request's images must be, checked before anything runs: the checks and their errors.

InvalidInput is a malformed request (HTTP 400), TooLarge one over a limit (HTTP 413); each message
says what is wrong. serving/routes.py maps them to statuses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_SIZE = 28  # MNIST's, the published model's; a served graph may take another square size (runtime.image_size)
MAX_BATCH = 256  # images per request
MAX_EXPLAIN = 16  # images per /explain request


class InvalidInput(ValueError):
    """The request's images are malformed; the message says how (HTTP 400)."""


class TooLarge(InvalidInput):
    """The request is over a size limit (HTTP 413)."""


def validate_images(images: Any, max_batch: int = MAX_BATCH, size: int = IMAGE_SIZE) -> np.ndarray:
    """A JSON array of N SxS (or 1xSxS) images in [0, 1] -> float32 (N, 1, S, S); else InvalidInput.
    S is `size`, the served graph's image size (28 for MNIST)."""
    if not isinstance(images, list):
        raise InvalidInput(f"'images' must be an array of N images of {size}x{size} numbers,"
                           f" got {type(images).__name__}")
    if not images:
        raise InvalidInput("'images' is empty: send at least one image")
    if len(images) > max_batch:
        raise TooLarge(f"'images' holds {len(images)} images; at most {max_batch} per request")
    try:
        array = np.array(images)
    except (ValueError, TypeError):
        raise InvalidInput(f"'images' is ragged: every image must be {size} rows of {size} numbers") from None
    if array.dtype.kind not in "iuf":
        raise InvalidInput("'images' must hold only numbers (no strings, booleans, nulls or objects)")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape[1:] != (size, size):
        raise InvalidInput(f"each image must be {size}x{size} (or 1x{size}x{size});"
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


def parse_octets(body: bytes, max_batch: int = MAX_BATCH, size: int = IMAGE_SIZE) -> np.ndarray:
    """An application/octet-stream body: N x S x S float32 little-endian in [0, 1] -> (N, 1, S, S)."""
    image_bytes = size * size * 4
    if not body or len(body) % image_bytes:
        raise InvalidInput(f"an application/octet-stream body must be N x {size} x {size} float32"
                           f" (a multiple of {image_bytes} bytes); got {len(body)} bytes")
    if len(body) // image_bytes > max_batch:
        raise TooLarge(f"the body holds {len(body) // image_bytes} images; at most {max_batch} per request")
    return check_pixels(np.frombuffer(body, dtype="<f4").reshape(-1, 1, size, size))
