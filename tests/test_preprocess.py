import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from serving.preprocess import mnist_style, preprocess
from mnist import read_split
from serving.errors import InvalidInput
from serving.runtime import CapsNetRuntime


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


MODES = ["L", "RGB", "RGBA", "LA", "P", "1", "I;16", "CMYK", "F"]
FORMAT_FOR = {"L": "PNG", "RGB": "JPEG", "RGBA": "PNG", "LA": "PNG", "P": "GIF", "1": "BMP", "I;16": "PNG",
              "CMYK": "JPEG", "F": "TIFF"}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(1, 4000), height=st.integers(1, 4000), mode=st.sampled_from(MODES[:-1]),
       seed=st.integers(0, 2**32 - 1), webp=st.booleans())
def test_any_valid_image_gives_a_28x28_array_in_unit_range(width, height, mode, seed, webp):
    if width * height > 1_500_000:  # keep the test fast: large sizes are exercised with flat content
        image = Image.new(mode, (width, height))
    else:
        rng = np.random.default_rng(seed)
        image = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8)).convert(mode)
    fmt = "WEBP" if webp and mode in ("L", "RGB", "RGBA") else FORMAT_FOR[mode]
    out = preprocess(encode(image, fmt))
    assert out.shape == (1, 28, 28) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_mnist_digits_keep_their_label_through_png(served_onnx, mnist_root):
    runtime = CapsNetRuntime(served_onnx, device="cpu")
    x = read_split("test", mnist_root, 200)[0][:, None]
    direct = runtime.predict(x).labels
    via_png = np.concatenate([preprocess(encode(Image.fromarray((255 * img[0]).astype(np.uint8))))[None]
                              for img in x])
    assert np.mean(runtime.predict(via_png).labels == direct) >= 0.99


def test_dark_on_light_upscaled_jpeg_is_inverted_and_fitted(mnist_root):
    x, _ = read_split("test", mnist_root, 1)
    digit = (255 * x[0]).astype(np.uint8)
    big = Image.fromarray(255 - digit).resize((300, 300), Image.Resampling.BICUBIC)
    out = preprocess(encode(big, "JPEG", quality=90))[0]
    assert out[0].max() < 0.05 and out[:, 0].max() < 0.05  # background dark
    rows, cols = np.nonzero(out > 0.1)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) <= 20  # fitted into 20x20
    ys, xs = np.indices(out.shape)
    assert abs((ys * out).sum() / out.sum() - 14) <= 1 and abs((xs * out).sum() / out.sum() - 14) <= 1


def test_blank_image_gives_zeros():
    assert not preprocess(encode(Image.new("L", (50, 50), 255))).any()


def test_an_animated_gif_is_read_by_its_first_frame(mnist_root):
    digit = Image.fromarray((read_split("test", mnist_root, 1)[0][0] * 255).astype(np.uint8))
    buf = io.BytesIO()
    digit.save(buf, format="GIF", save_all=True, append_images=[Image.new("L", digit.size, 255)], duration=100)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    np.testing.assert_array_equal(preprocess(buf.getvalue()), preprocess(encode(digit, "GIF")))


def noise_png(size: int = 64) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)))


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"),
    (b"hello, not an image", "not an image"),
    (noise_png()[:2000], "truncated"),
    (encode(Image.new("L", (8, 8)), "TIFF"), "not an image"),  # a real image, in a format we do not take
    (b"BM" + bytes(60), "header is malformed"),  # fuzz/findings/image/: an OSError from Pillow's BMP header
])
def test_bad_uploads(data, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        preprocess(data)


def test_mnist_style_on_a_28x28_digit_is_close_to_the_original(mnist_root):
    x = read_split("test", mnist_root, 20)[0][:, None]
    for img in x:
        out = mnist_style(img[0])
        assert np.abs(out - img).mean() < 0.05
