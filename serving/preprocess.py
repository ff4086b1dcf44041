"""Any uploaded digit image -> a 1x28x28 float32 array prepared the way MNIST was made (1xSxS for a graph on a bigger canvas).

Grey; bright digit on dark (inverted when the background is light); cropped to the ink; fitted
into 20x20 keeping the aspect ratio; placed in 28x28 with its centre of mass at the centre.
Dimensions are checked from the header before any pixel is decoded (pixel bombs).
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.errors import InvalidInput, TooLarge
from serving.limits import IMAGE_SIZE, MAX_PIXELS, MAX_UPLOAD_BYTES

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
# what Pillow's format plugins raise on a malformed file, in its header or its data (a BMP header of an unknown
# type: OSError, found by fuzz/; the others as Pillow's own Image.open lists them): the client's file, a 400
MALFORMED = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError, ZeroDivisionError)
FIT = 20  # MNIST fits each digit into 20x20 ...
INK = 0.1  # ... and we crop to pixels brighter than this (after background removal)


def decode(data: bytes) -> Image.Image:
    """Bytes -> a decoded PIL image; InvalidInput when it is not an image we take."""
    if not data:
        raise InvalidInput("the upload is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise TooLarge(f"the upload is {len(data):,} bytes; at most {MAX_UPLOAD_BYTES:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except UnidentifiedImageError:
        raise InvalidInput(f"not an image in a supported format ({', '.join(FORMATS)})") from None
    except MALFORMED as err:
        raise InvalidInput(f"the image's header is malformed: {err}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(f"the image is too large; at most {MAX_PIXELS:,} pixels") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidInput(f"the image has no pixels ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise TooLarge(f"the image is {width}x{height} = {width * height:,} pixels; at most {MAX_PIXELS:,}")
    try:
        image.load()
    except MALFORMED as err:
        raise InvalidInput(f"the image is truncated or corrupt: {err}") from None
    return image


def to_grey(image: Image.Image) -> np.ndarray:
    """Grey levels in [0, 1]; transparent areas become white paper."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = ImageOps.autocontrast(image.convert("I").point(lambda v: v / 256).convert("L"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def mnist_style(grey: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W) grey in [0, 1] -> (1, size, size) float32 in [0, 1], bright digit centred by mass. At MNIST's scale
    on any canvas: fitted into 20x20, so on a 40x40 canvas the digit is what an MNIST digit placed there is."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    ink = grey - background if background < 0.5 else background - grey  # digit bright on dark
    span = float(ink.max())
    out = np.zeros((1, size, size), dtype=np.float32)
    if span <= 1e-3:
        return out  # a blank image: nothing to centre
    ink = np.clip(ink / span, 0.0, 1.0)
    rows, cols = np.nonzero(ink > INK)
    ink = ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]  # crop to the ink
    h, w = ink.shape
    scale = FIT / max(h, w)
    fitted = (max(1, round(w * scale)), max(1, round(h * scale)))
    patch = np.asarray(Image.fromarray(ink, mode="F").resize(fitted, Image.Resampling.BILINEAR, reducing_gap=3.0))
    patch = np.clip(patch, 0.0, 1.0)
    mass = patch.sum()
    ys, xs = np.indices(patch.shape)
    cy, cx = (ys * patch).sum() / mass, (xs * patch).sum() / mass
    top = int(round(size / 2 - cy))
    left = int(round(size / 2 - cx))
    top = min(max(top, 0), size - patch.shape[0])
    left = min(max(left, 0), size - patch.shape[1])
    out[0, top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return out


def preprocess(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Uploaded bytes -> (1, size, size) float32 in [0, 1]; size is the served graph's image size."""
    image = decode(data)  # an animated GIF or WebP: its first frame, the one Image.open positions at and load reads
    return mnist_style(to_grey(image), size)
