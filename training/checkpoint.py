"""Weights as safetensors with a JSON sidecar (config + metadata); atomic saves, no pickle on load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.baseline import BaselineCNN, BaselineConfig
from training.model import CapsNet, CapsNetConfig

ARCHS = {"capsnet": (CapsNet, CapsNetConfig), "cnn": (BaselineCNN, BaselineConfig)}


def arch_of(model: torch.nn.Module) -> str:
    return next(name for name, (cls, _) in ARCHS.items() if isinstance(model, cls))


def sidecar(weights: Path | str) -> Path:
    return Path(weights).with_suffix(".json")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path | str, data: dict[str, Any]) -> None:
    path = Path(path)
    _atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def sha256_file(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_weights(path: Path | str, model: CapsNet | BaselineCNN, meta: dict[str, Any]) -> dict[str, Any]:
    """Write path (.safetensors) and its .json sidecar: config, sha256 of the weights, and meta."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(path, lambda p: save_file(tensors, str(p)))
    info = {**meta, "arch": arch_of(model), "config": model.cfg.to_dict(), "sha256": sha256_file(path), "weights": path.name}
    write_json(sidecar(path), info)
    return info


def load_weights(path: Path | str, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """Build the model from the sidecar's config and load the weights; verifies the sha256."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file")
    info = json.loads(sidecar(path).read_text())
    if info.get("sha256") and sha256_file(path) != info["sha256"]:
        raise ValueError(f"{path}: sha256 does not match {sidecar(path)}")
    model_cls, config_cls = ARCHS[info.get("arch", "capsnet")]
    model = model_cls(config_cls.from_dict(info["config"]))
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval(), info


def save_state(path: Path | str, state: dict[str, Any]) -> None:
    """Optimizer/scheduler/raw weights for --resume (tensors and plain types only)."""
    _atomic(Path(path), lambda p: torch.save(state, p))


def load_state(path: Path | str, device: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
