"""The routing written the common way, as broadcast multiply + ReduceSum: a reference for the benchmark.

Same weights and the same function as training.model.DigitCaps; only the graph differs. The model
itself writes u_hat and both routing sums as batched MatMul, which ONNX Runtime runs faster.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from export.onnx_export import export_onnx
from training.model import CapsNet, DigitCaps, squash


class BroadcastDigitCaps(DigitCaps):
    def predictions(self, u: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        W = self.W.view(cfg.num_primary, cfg.primary_dim, cfg.num_classes, cfg.digit_dim)  # (1152, 8, 10, 16)
        W = W.permute(2, 0, 3, 1)  # (10, 1152, 16, 8)
        return (W[None] * u[:, None, :, None, :]).sum(-1)  # (B, 10, 1152, 16)

    def route(self, u_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.zeros(u_hat.shape[:3], device=u_hat.device, dtype=u_hat.dtype)  # (B, 10, 1152)
        for r in range(self.iterations):
            c = torch.softmax(logits, dim=1)
            v = squash((c.unsqueeze(-1) * u_hat).sum(2))  # (B, 10, 16)
            if r < self.iterations - 1:
                logits = logits + (u_hat * v.unsqueeze(2)).sum(-1)
        return v, c


def broadcast_copy(model: CapsNet) -> CapsNet:
    """The same model (same weights) with the broadcast routing."""
    twin = copy.deepcopy(model)
    digit = BroadcastDigitCaps(model.cfg)
    digit.load_state_dict(model.digit_caps.state_dict())
    digit.iterations = model.digit_caps.iterations
    twin.digit_caps = digit
    return twin.eval()


def export_broadcast(model: CapsNet, out: Path | str) -> Path:
    return export_onnx(broadcast_copy(model), out)
