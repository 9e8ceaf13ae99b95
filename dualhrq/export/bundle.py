"""The bundle: the directory `dualhrq export` writes and `dualhrq serve` loads, with a manifest that proves
what is inside.

```
BUNDLE/manifest.json          Manifest (dualhrq.export.manifest): config, N, T, graph signature, precisions
                              with parity figures, versions, source checkpoint hash, SHA-256 of every other file
BUNDLE/inputs.json            the input artifacts (dualhrq.inputs), copied from the checkpoint
BUNDLE/segment_fp32.onnx      the unrolled segment (+ segment_fp32.onnx.data when saved with external data)
BUNDLE/segment_fp16.onnx      optional, only if it passed parity (or --force recorded the miss)
BUNDLE/segment_int8.onnx      optional, likewise
BUNDLE/engine.plan            optional TensorRT engine
BUNDLE/weights.safetensors    the checkpoint's weights, byte for byte (PyTorch backend, latency baseline)
BUNDLE/patterns/              the pattern library, encoder and regimes (dualhrq.patterns.artifacts)
```

Every file but the manifest is hashed; loading refuses a bundle with a changed, missing or extra file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dualhrq.config import Config
from dualhrq.contract import zero_carry
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.export.manifest import MANIFEST, Manifest, files_on_disk, read_manifest
from dualhrq.hashing import sha256_file
from dualhrq.inputs import InputPipeline

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
GRAPH_FILES = {p: f"segment_{p}.onnx" for p in PRECISIONS}
PLAN_FILE = "engine.plan"
WEIGHTS_FILE = "weights.safetensors"


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
    return _verify(root, _read(root))


def _verify(root: Path, manifest: Manifest) -> VerifyReport:
    listed = manifest.files
    checks = []
    for name, entry in sorted(listed.items()):
        file = root / name
        if not file.is_file():
            checks.append(FileCheck(name, "missing"))
        else:
            checks.append(FileCheck(name, "ok" if sha256_file(file) == entry.sha256 else "changed"))
    checks += [FileCheck(name, "extra") for name in files_on_disk(root) if name not in listed]
    return VerifyReport(root, checks)


def _read(root: Path) -> Manifest:
    if not root.is_dir():
        raise ModelLoadError(f"{root}: not a bundle directory")
    if not (root / MANIFEST).is_file():
        raise ModelLoadError(f"{root / MANIFEST}: missing; {root} is not a bundle written by `dualhrq export`")
    return read_manifest(root)


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, by default, verified) bundle. Paths point into the bundle directory."""

    root: Path
    manifest: Manifest

    @property
    def config(self) -> Config:
        return self.manifest.config

    @property
    def precisions(self) -> tuple[str, ...]:
        """The graph precisions written into this bundle, fp32 first."""
        written = self.manifest.precisions
        return tuple(p for p in PRECISIONS if p in written and written[p].file)

    def graph_path(self, precision: str = "fp32") -> Path:
        if precision not in PRECISIONS:
            raise ConfigurationError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
        if precision not in self.precisions:
            raise ModelLoadError(f"{self.root}: no {precision} graph in this bundle (it has "
                                 f"{', '.join(self.precisions)}); export with --{precision} to add one")
        return self.root / str(self.manifest.precisions[precision].file)

    def tensorrt_plan_path(self) -> Path:
        """Where the TensorRT engine is (the file exists only if the export built one: see manifest)."""
        return self.root / PLAN_FILE

    def state_dict(self) -> dict[str, Any]:
        """The model weights (for the PyTorch backend and latency baselines)."""
        import safetensors.torch

        return safetensors.torch.load_file(str(self.root / WEIGHTS_FILE))

    @property
    def model_version(self) -> str:
        return self.manifest.model_version

    def inputs(self, config: Config | None = None) -> InputPipeline:
        """The input pipeline training made; ``config``: the config served with (its pattern tunables)."""
        if not self.manifest.inputs:
            raise ModelLoadError(f"{self.root}: the bundle has no input artifacts (exported from a checkpoint that "
                                 "`dualhrq train` did not write?); requests cannot be turned into inputs")
        return InputPipeline.load(self.root, self.config, (config or self.config).patterns)

    def initial_carry(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(z_H, z_L) float32 zeros: the carry a request's first segment starts from."""
        return zero_carry(self.config.model, batch_size)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle. With `verify`, every file is re-hashed first and any changed, missing or extra file
    raises ModelLoadError naming it."""
    root = Path(path)
    manifest = _read(root)
    if verify:
        report = _verify(root, manifest)
        if not report.ok:
            raise ModelLoadError("bundle refused: " + "; ".join(report.problems))
    m = manifest.config.model
    if (m.n_cycles, m.t_steps) != (manifest.n_cycles, manifest.t_steps):
        raise ModelLoadError(f"{root / MANIFEST}: n_cycles/t_steps {manifest.n_cycles}/{manifest.t_steps} disagree "
                             f"with its config ({m.n_cycles}/{m.t_steps})")
    return Bundle(root, manifest)
