"""Checkpoints: safetensors weights + a JSON sidecar holding everything needed to rebuild the model.

Loading never unpickles: weights come from safetensors, the rest from JSON, and the weights' SHA-256 in the
sidecar catches a corrupted or swapped weights file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import safetensors.torch
import torch

from dualhrq.config import Config, config_from_dict, config_to_dict
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.hashing import sha256_file
from dualhrq.model import HRM

WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    config: Config
    step: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # feature stats, vocabularies, data window, ...
    weights_sha256: str = ""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a crash mid-write never leaves a half checkpoint under the real name


def save_checkpoint(directory: str | Path, model: HRM, config: Config, step: int = 0,
                    metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `checkpoint.json` into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(d / WEIGHTS_FILE, safetensors.torch.save(state))
    config = msgspec.structs.replace(config, model=model.cfg)  # the model's own config wins (vocab growth)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config_to_dict(config),
        "step": step,
        "metrics": metrics or {},
        "extra": extra or {},
        "param_count": sum(p.numel() for p in model.parameters()),
        "weights_sha256": sha256_file(d / WEIGHTS_FILE),
    }
    _atomic_write(d / META_FILE, json.dumps(meta, indent=2, sort_keys=True).encode())
    return d


def read_checkpoint_meta(directory: str | Path) -> CheckpointMeta:
    """Read and validate the JSON sidecar only (cheap; no weights)."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise ModelLoadError(f"{d}: missing {META_FILE}")
    try:
        raw = json.loads(meta_path.read_text())
        config = config_from_dict(raw["config"], str(meta_path))
        return CheckpointMeta(config, int(raw.get("step", 0)), raw.get("metrics", {}), raw.get("extra", {}),
                              str(raw["weights_sha256"]))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{meta_path}: corrupted JSON: {e}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{meta_path}: malformed checkpoint metadata: {e}") from None
    except ConfigurationError as e:
        raise ModelLoadError(f"{meta_path}: config does not validate: {e}") from None


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[HRM, CheckpointMeta]:
    """Rebuild the model from a checkpoint directory. Raises ModelLoadError with the reason on any problem."""
    d = Path(directory)
    meta = read_checkpoint_meta(d)
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{d}: missing {WEIGHTS_FILE}")
    if sha256_file(weights) != meta.weights_sha256:
        raise ModelLoadError(f"{weights}: SHA-256 does not match {META_FILE}: the file is corrupted or replaced")
    try:
        state = safetensors.torch.load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises several types on a damaged header
        raise ModelLoadError(f"{weights}: unreadable safetensors file: {e}") from None
    model = HRM(meta.config.model).to(device)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{d}: weights do not match the config: {e}") from None
    model.eval()
    return model, meta
