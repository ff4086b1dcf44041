"""The limits a request must keep, defined once; serving/errors.py names the errors for breaking them."""

from __future__ import annotations

IMAGE_SIZE = 28  # MNIST's, the published model's; a served graph may take another square size (runtime.image_size)
MAX_BATCH = 256  # images per request
MAX_EXPLAIN = 16  # images per /explain request
MAX_BODY_BYTES = 16 * 1024 * 1024  # 256 images as JSON fit in about 4 MB; uploads are capped lower
DRAIN_LIMIT = 4 * MAX_BODY_BYTES  # an over-limit body up to this size is read to its end before the 413
MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # an uploaded image file
MAX_PIXELS = 4096 * 4096  # width x height of an uploaded image, from its header, before decoding
MAX_CONCURRENCY = 128  # requests inside the service at once (BentoML's traffic.max_concurrency; 429 past it)
MAX_WAITING = MAX_CONCURRENCY  # requests the batcher queues before it refuses more (503)
