"""The bundle: the directory `dualhrq export` writes and `dualhrq serve` loads, with a manifest that proves
what is inside.

```
BUNDLE/manifest.json          config, N, T, graph signature, precisions with parity figures, versions,
                              source checkpoint hash, feature statistics, SHA-256 of every other file
BUNDLE/segment_fp32.onnx      the unrolled segment (+ segment_fp32.onnx.data when saved with external data)
BUNDLE/segment_fp16.onnx      optional, only if it passed parity (or --force recorded the miss)
BUNDLE/segment_int8.onnx      optional, likewise
BUNDLE/engine.plan            optional TensorRT engine
BUNDLE/weights.safetensors    the checkpoint's weights, byte for byte (PyTorch backend, latency baseline)
BUNDLE/patterns/              optional pattern library, encoder and regimes (dualhrq.patterns.artifacts)
```

Every file but the manifest is hashed; loading refuses a bundle with a changed, missing or extra file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dualhrq.config import Config, config_from_dict
from dualhrq.contract import zero_carry
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.hashing import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_FILES = {p: f"segment_{p}.onnx" for p in PRECISIONS}
PLAN_FILE = "engine.plan"
WEIGHTS_FILE = "weights.safetensors"
PATTERNS_DIR = "patterns"


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file under `root`, add the hashes and the creation time, and write manifest.json."""
    root = Path(root)
    full = {"format_version": FORMAT_VERSION, **manifest,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": {name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size}
                      for name in _files_on_disk(root)}}
    (root / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True, allow_nan=False))
    return full


def _files_on_disk(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)


@dataclass(frozen=True)
class FileCheck:
    name: str
    status: str  # "ok", "changed", "missing" or "extra"


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    checks: list[FileCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status == "ok" for c in self.checks)

    @property
    def problems(self) -> list[str]:
        words = {"changed": "SHA-256 does not match the manifest (corrupted or modified)",
                 "missing": "listed in the manifest but missing", "extra": "not listed in the manifest"}
        return [f"{self.root / c.name}: {words[c.status]}" for c in self.checks if c.status != "ok"]


def verify_bundle(path: str | Path) -> VerifyReport:
    """Re-hash every file of a bundle against its manifest. Raises ModelLoadError only when the manifest
    itself is missing or unreadable; file problems are in the report."""
    root = Path(path)
    return _verify(root, _read_manifest(root))


def _verify(root: Path, manifest: dict[str, Any]) -> VerifyReport:
    listed: dict[str, Any] = manifest.get("files", {})
    checks = []
    for name, entry in sorted(listed.items()):
        file = root / name
        if not file.is_file():
            checks.append(FileCheck(name, "missing"))
        else:
            checks.append(FileCheck(name, "ok" if sha256_file(file) == entry.get("sha256") else "changed"))
    checks += [FileCheck(name, "extra") for name in _files_on_disk(root) if name not in listed]
    return VerifyReport(root, checks)


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not root.is_dir():
        raise ModelLoadError(f"{root}: not a bundle directory")
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing; {root} is not a bundle written by `dualhrq export`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable JSON: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ModelLoadError(f"{path}: not a bundle manifest (no file list)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: format_version {manifest.get('format_version')!r}, this build reads "
                             f"{FORMAT_VERSION}")
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, by default, verified) bundle. Paths point into the bundle directory."""

    root: Path
    manifest: dict[str, Any]
    config: Config

    @property
    def precisions(self) -> tuple[str, ...]:
        """The graph precisions written into this bundle, fp32 first."""
        written = self.manifest["precisions"]
        return tuple(p for p in PRECISIONS if p in written and written[p].get("file"))

    def graph_path(self, precision: str = "fp32") -> Path:
        if precision not in PRECISIONS:
            raise ConfigurationError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision not in self.precisions:
            raise ModelLoadError(f"{self.root}: no {precision} graph in this bundle (it has "
                                 f"{', '.join(self.precisions)}); export with --{precision} to add one")
        return self.root / self.manifest["precisions"][precision]["file"]

    def tensorrt_plan_path(self) -> Path:
        """Where the TensorRT engine is (the file exists only if the export built one: see manifest)."""
        return self.root / PLAN_FILE

    def state_dict(self) -> dict[str, Any]:
        """The model weights (for the PyTorch backend and latency baselines)."""
        import safetensors.torch

        return safetensors.torch.load_file(str(self.root / WEIGHTS_FILE))

    @property
    def n_cycles(self) -> int:
        return int(self.manifest["n_cycles"])

    @property
    def t_steps(self) -> int:
        return int(self.manifest["t_steps"])

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def feature_stats(self) -> dict[str, Any] | None:
        return self.manifest.get("feature_stats")

    @property
    def instrument_vocab(self) -> list[str] | None:
        return self.manifest.get("instrument_vocab")

    @property
    def extra(self) -> dict[str, Any]:
        """The checkpoint's other input artifacts (regime model, pattern encoder, target scales, ...)."""
        return self.manifest.get("extra", {})

    @property
    def patterns_dir(self) -> Path | None:
        name = self.manifest.get("patterns")
        return self.root / name if name else None

    def initial_carry(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(z_H, z_L) float32 zeros: the carry a request's first segment starts from."""
        return zero_carry(self.config.model, batch_size)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle. With `verify`, every file is re-hashed first and any changed, missing or extra file
    raises ModelLoadError naming it."""
    root = Path(path)
    manifest = _read_manifest(root)
    if verify:
        report = _verify(root, manifest)
        if not report.ok:
            raise ModelLoadError("bundle refused: " + "; ".join(report.problems))
    try:
        config = config_from_dict(manifest["config"], str(root / MANIFEST))
    except (ConfigurationError, KeyError) as e:
        raise ModelLoadError(f"{root / MANIFEST}: config unreadable: {e}") from None
    m = config.model
    if (m.n_cycles, m.t_steps) != (manifest.get("n_cycles"), manifest.get("t_steps")):
        raise ModelLoadError(f"{root / MANIFEST}: n_cycles/t_steps {manifest.get('n_cycles')}/"
                             f"{manifest.get('t_steps')} disagree with its config ({m.n_cycles}/{m.t_steps})")
    return Bundle(root, manifest, config)
