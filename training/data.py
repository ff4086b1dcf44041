"""MNIST for training: the digits as tensors (read by the torch-free `mnist` package) and the 2-pixel shift."""

from __future__ import annotations

from pathlib import Path

import torch

from mnist import DEFAULT_ROOT, read_split

MNIST_SIZE = 28


def load_split(split: str, root: Path | str = DEFAULT_ROOT, limit: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64, fetched if needed."""
    images, labels = read_split(split, root, limit)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


def centre(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, 28, 28) -> (N, 1, size, size): each digit in the middle of a black canvas (itself at 28)."""
    pad = size - images.shape[-1]
    if pad < 0:
        raise ValueError(f"a {size}x{size} canvas is smaller than the {images.shape[-1]}x{images.shape[-1]} digits")
    return torch.nn.functional.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)) if pad else images


def random_shift(images: torch.Tensor, max_shift: int = 2, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """Shift each image by up to max_shift pixels in x and y, filling with zeros (training only)."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)  # (N, 1, H+2s, W+2s)
    span = 2 * max_shift + 1
    dy = torch.randint(0, span, (n,), device=images.device, generator=generator)
    dx = torch.randint(0, span, (n,), device=images.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[:, 0][batch, rows, cols].unsqueeze(1)
