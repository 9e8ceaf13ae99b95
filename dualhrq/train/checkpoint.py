"""Checkpoints: safetensors weights + a JSON sidecar (CheckpointMeta) holding everything needed to rebuild the
model; the input pipeline's files (dualhrq.inputs) beside them.

Loading never unpickles: weights come from safetensors, the rest from JSON, and the weights' SHA-256 in the
sidecar catches a corrupted or swapped weights file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import safetensors.torch
import torch

from dualhrq.config import Config
from dualhrq.errors import ModelLoadError
from dualhrq.hashing import sha256_file
from dualhrq.model import HRM
from dualhrq.persisted import read_record, write_record

WEIGHTS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 2  # 2: input artifacts in inputs.json, not in an untyped "extra"


class CheckpointMeta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format_version: int
    config: Config
    step: int
    param_count: int
    weights_sha256: str
    val_cross_entropy: float | None = None  # what `best` is chosen by; None: not evaluated
    metrics: dict[str, Any] = {}  # the training log's record at this step, for people


def save_checkpoint(directory: str | Path, model: HRM, config: Config, step: int = 0,
                    metrics: dict[str, Any] | None = None, val_cross_entropy: float | None = None) -> Path:
    """Write `model.safetensors` and `checkpoint.json` into `directory` (created if needed)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = safetensors.torch.save(state)
    tmp = d / (WEIGHTS_FILE + ".tmp")
    tmp.write_bytes(weights)
    tmp.replace(d / WEIGHTS_FILE)  # a crash mid-write never leaves a half checkpoint under the real name
    config = msgspec.structs.replace(config, model=model.cfg)  # the model's own config wins (vocab growth)
    write_record(d / META_FILE, CheckpointMeta(FORMAT_VERSION, config, step, sum(p.numel() for p in model.parameters()),
                                               sha256_file(d / WEIGHTS_FILE), val_cross_entropy, metrics or {}))
    return d


def read_checkpoint_meta(directory: str | Path) -> CheckpointMeta:
    """Read and validate the JSON sidecar only (cheap; no weights)."""
    d = Path(directory)
    if not d.is_dir():
        what = "is a file, not" if d.exists() else "no such"
        raise ModelLoadError(f"{d}: {what} checkpoint directory (a checkpoint or a training run's directory)")
    return read_record(d / META_FILE, CheckpointMeta, FORMAT_VERSION,
                       "it was written by another version of dualhrq: retrain with this one")


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
