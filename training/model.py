"""CapsNet: "Dynamic Routing Between Capsules" (Sabour, Frosst & Hinton, 2017), top to bottom.

image (B, 1, 28, 28)
  -> Conv1 9x9, 256, ReLU                  (B, 256, 20, 20)
  -> PrimaryCaps 9x9 stride 2, 32 x 8D     (B, 1152, 8)     squashed
  -> DigitCaps, 3 routing iterations       (B, 10, 16)      v_j; class score |v_j|
  -> Decoder on one masked capsule         (B, 1, 28, 28)

Explaining a prediction (`CapsNet.explain`): the last routing iteration's coupling coefficients
c_ij for the winning class j, averaged over the 32 capsule types at each 6x6 position (the routing
map) and over the 36 positions of each type (the type shares). Each c_ij is the share of capsule
i's vote that went to parent j (the softmax over the 10 parents), so both are shares in [0, 1]
with 0.1 meaning "no preference": means, not sums, so that they read the same at any grid size.

The routing is written as batched matrix products (u_hat and both routing sums), the form that
ONNX Runtime runs fastest, so that the exported graph is this forward pass unrolled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-7  # keeps |s| and |v| differentiable at zero; ONNX export drops an added constant of 1e-8 or less as "x + 0"


@dataclass(frozen=True)
class CapsNetConfig:
    """The one source of truth for the model's shape; stored beside the weights and in the ONNX."""

    image_size: int = 28
    conv1_channels: int = 256
    kernel_size: int = 9
    primary_types: int = 32  # 32 capsule types of ...
    primary_dim: int = 8  # ... 8D each, over a 6x6 grid
    primary_stride: int = 2
    num_classes: int = 10
    digit_dim: int = 16
    routing_iters: int = 3
    decoder_hidden: tuple[int, int] = (512, 1024)

    @property
    def primary_grid(self) -> int:
        conv1_out = self.image_size - self.kernel_size + 1
        return (conv1_out - self.kernel_size) // self.primary_stride + 1

    @property
    def num_primary(self) -> int:
        return self.primary_types * self.primary_grid**2  # 1152

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CapsNetConfig":
        d = dict(d)
        d["decoder_hidden"] = tuple(d["decoder_hidden"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def squash(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """v = |s|^2 / (1 + |s|^2) * s / |s|: keeps the direction, maps the length into [0, 1)."""
    sq = (s * s).sum(dim, keepdim=True)
    return s * (sq / (1.0 + sq) / torch.sqrt(sq + EPS))


def capsule_lengths(v: torch.Tensor) -> torch.Tensor:
    """|v_j| over the last axis: (B, 10, 16) -> (B, 10)."""
    return torch.sqrt((v * v).sum(-1) + EPS)


class PrimaryCaps(nn.Module):
    """Conv 256 -> 32*8 channels, stride 2; channels [8t, 8t+8) form the 8D capsules of type t."""

    def __init__(self, cfg: CapsNetConfig):
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(cfg.conv1_channels, cfg.primary_types * cfg.primary_dim,
                              cfg.kernel_size, stride=cfg.primary_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, b = self.cfg, x.shape[0]
        u = self.conv(x)  # (B, 256, 6, 6)
        u = u.view(b, cfg.primary_types, cfg.primary_dim, -1)  # (B, 32, 8, 36)
        u = u.permute(0, 1, 3, 2).reshape(b, cfg.num_primary, cfg.primary_dim)  # (B, 1152, 8), i = 36t + 6y + x
        return squash(u)


class DigitCaps(nn.Module):
    """One W_ij (16x8) per pair (input i, parent j), and routing-by-agreement between them."""

    def __init__(self, cfg: CapsNetConfig):
        super().__init__()
        self.cfg = cfg
        self.iterations = cfg.routing_iters
        # (1152, 8, 10*16): u_hat for capsule i is one (B, 8) @ (8, 160) product
        self.W = nn.Parameter(0.01 * torch.randn(cfg.num_primary, cfg.primary_dim,
                                                 cfg.num_classes * cfg.digit_dim))

    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        """u_hat_{j|i} = W_ij u_i: (B, 1152, 8) -> (B, 10, 1152, 16)."""
        cfg, b = self.cfg, u.shape[0]
        u_hat = torch.matmul(u.transpose(0, 1), self.W)  # (1152, B, 160)
        u_hat = u_hat.view(cfg.num_primary, b, cfg.num_classes, cfg.digit_dim)  # (1152, B, 10, 16)
        return u_hat.permute(1, 2, 0, 3)  # (B, 10, 1152, 16)

    def route(self, u_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Routing by agreement; returns v (B, 10, 16) and the last coupling coefficients c (B, 10, 1152)."""
        logits = torch.zeros(u_hat.shape[:3], device=u_hat.device, dtype=u_hat.dtype)  # b_ij: (B, 10, 1152)
        for r in range(self.iterations):
            c = torch.softmax(logits, dim=1)  # over the 10 parents j, for every input i
            s = torch.matmul(c.unsqueeze(2), u_hat).squeeze(2)  # sum_i c_ij u_hat_j|i: (B, 10, 16)
            v = squash(s)  # (B, 10, 16)
            if r < self.iterations - 1:
                logits = logits + torch.matmul(u_hat, v.unsqueeze(-1)).squeeze(-1)  # u_hat . v: (B, 10, 1152)
        return v, c

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.route(self.predictions(u))[0]


class Decoder(nn.Module):
    """Reconstruct the image from one capsule: the others are masked to zero."""

    def __init__(self, cfg: CapsNetConfig):
        super().__init__()
        self.cfg = cfg
        h1, h2 = cfg.decoder_hidden
        self.net = nn.Sequential(
            nn.Linear(cfg.num_classes * cfg.digit_dim, h1), nn.ReLU(inplace=True),
            nn.Linear(h1, h2), nn.ReLU(inplace=True),
            nn.Linear(h2, cfg.image_size**2), nn.Sigmoid(),
        )

    def forward(self, v: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        mask = F.one_hot(keep, self.cfg.num_classes).to(v.dtype).unsqueeze(-1)  # (B, 10, 1)
        out = self.net((v * mask).flatten(1))  # (B, 784)
        return out.view(-1, 1, self.cfg.image_size, self.cfg.image_size)


def routing_summary(c: torch.Tensor, keep: torch.Tensor, cfg: CapsNetConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Coupling coefficients c (B, 10, 1152) -> for class keep (B,): the routing map (B, 6, 6), the mean over
    the 32 types at each position, and the type shares (B, 32), the mean over the 36 positions of each type."""
    mask = F.one_hot(keep, cfg.num_classes).to(c.dtype).unsqueeze(-1)  # (B, 10, 1)
    grid = cfg.primary_grid
    c_keep = (c * mask).sum(1).view(-1, cfg.primary_types, grid, grid)  # (B, 32, 6, 6), i = 36t + 6y + x
    return c_keep.mean(1), c_keep.mean((2, 3))


class CapsNet(nn.Module):
    def __init__(self, cfg: CapsNetConfig = CapsNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(1, cfg.conv1_channels, cfg.kernel_size)
        self.primary_caps = PrimaryCaps(cfg)
        self.digit_caps = DigitCaps(cfg)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns lengths (B, 10), poses (B, 10, 16), reconstruction (B, 1, 28, 28).

        The decoder sees the true class's capsule when target is given (training), else the longest.
        """
        h = F.relu(self.conv1(x))  # (B, 256, 20, 20)
        u = self.primary_caps(h)  # (B, 1152, 8)
        v = self.digit_caps(u)  # (B, 10, 16)
        lengths = capsule_lengths(v)  # (B, 10)
        keep = target if target is not None else lengths.argmax(1)
        return lengths, v, self.decoder(v, keep)

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """forward's three outputs for the longest capsule, and its routing map (B, 6, 6) and type shares (B, 32)."""
        h = F.relu(self.conv1(x))
        v, c = self.digit_caps.route(self.digit_caps.predictions(self.primary_caps(h)))
        lengths = capsule_lengths(v)
        keep = lengths.argmax(1)
        return (lengths, v, self.decoder(v, keep), *routing_summary(c, keep, self.cfg))

    def decode(self, pose: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The decoder on one capsule given directly: pose (B, 16) of class label (B,) -> (B, 1, 28, 28)."""
        v = pose.unsqueeze(1).expand(-1, self.cfg.num_classes, -1)  # the mask keeps only row `label`
        return self.decoder(v, label)


def margin_loss(lengths: torch.Tensor, target: torch.Tensor, m_plus: float = 0.9, m_minus: float = 0.1,
                down_weight: float = 0.5) -> torch.Tensor:
    """sum_k T_k max(0, m+ - |v_k|)^2 + 0.5 (1 - T_k) max(0, |v_k| - m-)^2, averaged over the batch.

    target: the class of each image (B,), or T itself (B, 10), 1 for every class present (two on MultiMNIST)."""
    t = (F.one_hot(target, lengths.shape[1]) if target.dim() == 1 else target).to(lengths.dtype)
    present = t * F.relu(m_plus - lengths) ** 2
    absent = down_weight * (1.0 - t) * F.relu(lengths - m_minus) ** 2
    return (present + absent).sum(1).mean()


RECONSTRUCTION_WEIGHT = 0.0005


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """0.0005 * sum of squared pixel errors, averaged over the batch."""
    return RECONSTRUCTION_WEIGHT * ((reconstruction - images) ** 2).flatten(1).sum(1).mean()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
