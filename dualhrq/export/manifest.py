"""The bundle manifest: what a bundle holds and what it proved at export, as one versioned Struct.

`dualhrq export` writes it (`write_manifest` adds the creation time and every file's SHA-256); `load_bundle`
reads it back through the same Struct, so a field is named once, with its type, and a bundle from another
version of dualhrq is refused with its format number rather than misread.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from dualhrq.config import Config
from dualhrq.export.gpu_target import GpuTarget
from dualhrq.hashing import sha256_file
from dualhrq.persisted import read_record, write_record

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: typed; the input artifacts in inputs.json beside it (format 1 carried them inline)


class _Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ActSummary(_Record):
    min_segments: int
    max_segments: int
    fixed_segments: int


class GraphSummary(_Record):
    opset: int
    node_count: int
    inputs: list[dict[str, Any]]  # [{name, dtype, shape}], shape entries int or "batch"
    outputs: list[dict[str, Any]]
    batch_axis: str | int


class NodeCounts(_Record):
    """A graph's node count as exported and after ONNX Runtime's optimisations on the exporting machine, and
    the op types its fusions introduced (e.g. SimplifiedLayerNormalization, FusedMatMul, MatMulInteger)."""

    exported: int
    optimized: int
    fused: dict[str, int]
    optimized_ops: dict[str, int]
    measured_with: str


class Variant(_Record):
    """One precision's graph (or the TensorRT engine) and how it compared with PyTorch on the parity inputs."""

    file: str | None  # None: it missed its bound and was not written
    passed: bool
    forced: bool  # kept by --force despite a miss
    parity: dict[str, Any]  # the measured figures (dualhrq.export.parity), for people and reports
    measured_with: str
    carry: dict[str, Any] | None = None  # the multi-segment carry check (dualhrq.export.engine_parity)
    note: str | None = None
    nodes: NodeCounts | None = None
    quantization: dict[str, Any] | None = None  # int8 only: the scheme chosen for the exporting CPU, and why


class TensorRT(_Record):
    built: bool
    requested: bool = False
    reason: str | None = None  # why it was not built
    file: str | None = None
    max_batch: int | None = None
    fp16: bool | None = None
    tensorrt_version: str | None = None
    passed: bool | None = None
    forced: bool | None = None
    parity: dict[str, Any] | None = None
    # the GPU the plan was built on (as PyTorch names it): a plan is refused on any other
    gpu_name: str | None = None
    compute_capability: str | None = None  # "major.minor"
    carry: dict[str, Any] | None = None  # the engine's carry and halting check (dualhrq.export.engine_parity)

    def target(self) -> GpuTarget | None:
        """What the plan was built for, or None when the manifest does not say (an older export)."""
        if self.gpu_name is None or self.compute_capability is None or self.tensorrt_version is None:
            return None
        return GpuTarget(self.gpu_name, self.compute_capability, self.tensorrt_version)


class ParityInputs(_Record):
    source: str  # where they came from, in words
    samples: int


class SourceCheckpoint(_Record):
    path: str
    step: int
    weights_sha256: str
    metadata_sha256: str


class FileEntry(_Record):
    sha256: str
    bytes: int


class Manifest(_Record):
    format_version: int
    model_version: str
    config: Config
    param_count: int
    n_cycles: int
    t_steps: int
    act: ActSummary
    graph: GraphSummary
    precisions: dict[str, Variant]
    tensorrt: TensorRT
    parity_inputs: ParityInputs
    versions: dict[str, str]
    source_checkpoint: SourceCheckpoint
    inputs: bool  # the input pipeline (inputs.json, patterns/) is in the bundle: it can serve requests
    weights: str
    created_at: str = ""
    files: dict[str, FileEntry] = {}  # every file but the manifest, by path relative to the bundle


def write_manifest(root: Path, manifest: Manifest) -> Manifest:
    """Hash every file under ``root``, add the hashes and the creation time, and write manifest.json."""
    full = msgspec.structs.replace(
        manifest, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        files={name: FileEntry(sha256_file(root / name), (root / name).stat().st_size) for name in files_on_disk(root)})
    write_record(root / MANIFEST, full)
    return full


def read_manifest(root: Path) -> Manifest:
    return read_record(root / MANIFEST, Manifest, FORMAT_VERSION,
                       "re-export its checkpoint with this version's `dualhrq export`")


def files_on_disk(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)
