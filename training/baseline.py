"""A conventional CNN baseline, for the affine-robustness comparison (`--arch cnn`).

Shaped after the paper's baseline (three 5x5 conv layers of 256, 256, 128 channels, then fully
connected 328 and 192 with dropout, softmax over 10), with 2x2 max-pooling after the first two
convolutions so that it has about as many parameters as CapsNet (4.5M against 8.2M) instead of
the paper's 35.4M. Trained with the same data, shifts, optimizer and epochs as CapsNet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BaselineConfig:
    image_size: int = 28  # 40 (affNIST-like) or 36 (MultiMNIST-like): the classifier's input grows with it
    channels: tuple[int, int, int] = (256, 256, 128)
    hidden: tuple[int, int] = (328, 192)
    num_classes: int = 10
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BaselineConfig":
        return cls(image_size=d.get("image_size", 28), channels=tuple(d["channels"]), hidden=tuple(d["hidden"]),
                   num_classes=d["num_classes"], dropout=d["dropout"])

    @property
    def pooled(self) -> int:
        """The side of the last feature map: two 2x2 poolings (7 at 28x28)."""
        return self.image_size // 4


class BaselineCNN(nn.Module):
    def __init__(self, cfg: BaselineConfig = BaselineConfig()):
        super().__init__()
        self.cfg = cfg
        c1, c2, c3 = cfg.channels
        h1, h2 = cfg.hidden
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (B, 256, 14, 14) at 28x28
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (B, 256, 7, 7)
            nn.Conv2d(c2, c3, 5, padding=2), nn.ReLU(inplace=True),  # (B, 128, 7, 7)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c3 * cfg.pooled**2, h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
            nn.Linear(h2, cfg.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # logits (B, 10)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target)
