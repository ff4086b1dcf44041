"""Digits on bigger canvases, made from the MNIST digits by seeded functions (the commands that use them:
`python -m experiments.affnist`, `python -m experiments.multimnist`).

affNIST-like (40x40): each test digit under its own random affine transform in the ranges the affNIST page
documents (https://www.cs.toronto.edu/~tijmen/affNIST/, "The transformations": rotation at most 20 degrees
either way, shear at most 0.2 either way, vertical and horizontal scale each 0.8 to 1.2, then a random
translation that keeps the whole digit on the 40x40 canvas).

MultiMNIST-like (36x36, the paper's section 6): two digits of different classes, each shifted by up to 4
pixels in x and y from the centre of a 36x36 canvas, overlaid (the brighter of the two at each pixel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.data import centre

AFFNIST = {"canvas": 40, "rotation_deg": 20.0, "shear": 0.2, "scale": (0.8, 1.2),
           "translation": "uniform over the positions that keep the whole digit on the canvas",
           "source": "https://www.cs.toronto.edu/~tijmen/affNIST/"}
MULTI = {"canvas": 36, "max_shift": 4, "overlay": "pixel-wise max"}
INK = 0.05  # a pixel brighter than this is part of the digit (its bounding box)


def translate(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move image k by (dy[k], dx[k]) whole pixels (down, right), filling with zeros; what leaves the canvas is lost."""
    n, _, h, w = images.shape
    rows = torch.arange(h, device=images.device)[None, :] - dy[:, None]  # (N, H): the source row of each row
    cols = torch.arange(w, device=images.device)[None, :] - dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None]
    moved = images[:, 0][batch, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
    return (moved * inside).unsqueeze(1)


def bounding_boxes(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 4) top, bottom, left, right rows/columns holding ink (inclusive)."""
    rows, cols = images[:, 0].amax(2) > INK, images[:, 0].amax(1) > INK  # (N, H), (N, W)

    def ends(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        first = torch.where(mask, index, mask.shape[1]).amin(1)
        last = torch.where(mask, index, -1).amax(1)
        return first, last

    return torch.stack([*ends(rows), *ends(cols)], 1)


def affnist_like(digits: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(N, 1, 28, 28) -> (N, 1, 40, 40) affNIST-like images and the parameters each one drew."""
    g = torch.Generator().manual_seed(seed)
    n = len(digits)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    angle = torch.deg2rad(uniform(-AFFNIST["rotation_deg"], AFFNIST["rotation_deg"]))
    shear = uniform(-AFFNIST["shear"], AFFNIST["shear"])
    scale_y, scale_x = uniform(*AFFNIST["scale"]), uniform(*AFFNIST["scale"])
    cos, sin, zero, one = torch.cos(angle), torch.sin(angle), torch.zeros(n), torch.ones(n)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shearing = torch.stack([torch.stack([one, shear], -1), torch.stack([zero, one], -1)], -2)
    scaling = torch.stack([torch.stack([scale_x, zero], -1), torch.stack([zero, scale_y], -1)], -2)
    forward = rotation @ shearing @ scaling  # (N, 2, 2), in (x, y) about the canvas centre
    inverse = torch.linalg.inv(forward)  # the sampling grid maps output to input
    theta = torch.cat([inverse, torch.zeros(n, 2, 1)], dim=2)
    canvas = centre(digits, AFFNIST["canvas"])
    grid = F.affine_grid(theta, list(canvas.shape), align_corners=False)
    turned = F.grid_sample(canvas, grid, padding_mode="zeros", align_corners=False).clamp(0, 1)
    top, bottom, left, right = bounding_boxes(turned).unbind(1)
    size = AFFNIST["canvas"]
    dy = (-top + (torch.rand(n, generator=g) * (size - bottom + top)).floor()).long()  # in [-top, size-1-bottom]
    dx = (-left + (torch.rand(n, generator=g) * (size - right + left)).floor()).long()
    params = {"rotation_deg": torch.rad2deg(angle), "shear": shear, "scale_y": scale_y, "scale_x": scale_x,
              "shift_y": dy, "shift_x": dx}
    return translate(turned, dy, dx), params


def random_placement(digits: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """(N, 1, 28, 28) -> (N, 1, size, size): each digit at a random whole-pixel position on the canvas, seeded
    (what training with --canvas 40 --shift 6 draws from; the clean test set of the affNIST setup)."""
    g = torch.Generator().manual_seed(seed)
    span = size - digits.shape[-1]
    dy, dx = (torch.randint(0, span + 1, (len(digits),), generator=g) - span // 2 for _ in range(2))
    return translate(centre(digits, size), dy, dx)


def multimnist_like(digits: torch.Tensor, labels: torch.Tensor, pairs: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pairs` overlaid pairs from digits (N, 1, 28, 28) and labels (N,): images (P, 1, 36, 36), their two labels
    (P, 2) and the two digits apart, each where it lies in the image (P, 2, 1, 36, 36): the reconstruction targets."""
    n, size, shift = len(digits), MULTI["canvas"], MULTI["max_shift"]
    first = torch.randint(0, n, (pairs,), generator=generator)
    second = torch.randint(0, n, (pairs,), generator=generator)
    for _ in range(100):  # redraw every second digit of the first's class until none is left
        same = labels[second] == labels[first]
        if not same.any():
            break
        second[same] = torch.randint(0, n, (int(same.sum()),), generator=generator)
    else:
        raise ValueError("could not draw pairs of different classes: do the digits hold at least two classes?")
    parts = []
    for index in (first, second):
        dy, dx = (torch.randint(-shift, shift + 1, (pairs,), generator=generator) for _ in range(2))
        parts.append(translate(centre(digits[index], size), dy, dx))
    parts_t = torch.stack(parts, 1)  # (P, 2, 1, 36, 36)
    return parts_t.amax(1), torch.stack([labels[first], labels[second]], 1), parts_t

