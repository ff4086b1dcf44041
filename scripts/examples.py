"""Write the documents' example inputs: docs/examples/digit.json, digit.png and digits.f32.

digit.json: the first MNIST test digit (a 7) as the /classify body (the README's curl example).
digit.png:  the third MNIST test digit (a 1) as a 200x200 PNG, dark on light, for /classify_image.
digits.f32: the first 8 MNIST test digits, 8 x 28 x 28 float32 little-endian (models/ONNX.md's examples).

    python scripts/examples.py [--data data] [--out docs/examples]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mnist import DEFAULT_ROOT, read_split  # noqa: E402


def write_examples(data: Path, out: Path) -> list[Path]:
    images, _ = read_split("test", data, 8)
    out.mkdir(parents=True, exist_ok=True)
    body = {"images": [np.round(images[0], 4).tolist()]}
    (out / "digit.json").write_text(json.dumps(body, separators=(",", ":")) + "\n")
    picture = Image.fromarray((255 - images[2] * 255).round().astype(np.uint8)).resize((200, 200), Image.BILINEAR)
    picture.save(out / "digit.png", optimize=True)
    images.astype("<f4").tofile(out / "digits.f32")
    return [out / "digit.json", out / "digit.png", out / "digits.f32"]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT, help="MNIST root folder")
    p.add_argument("--out", type=Path, default=Path("docs/examples"), help="folder to write")
    args = p.parse_args()
    for path in write_examples(args.data, args.out):
        print(path)
