"""What `dualhrq export` can be asked for (ExportOptions) and the defaults its --help shows.

Free of torch and onnx on purpose: the CLI builds every command's parser, `dualhrq serve` and `--help`
included, from this module, and the serving runtime must start without PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dualhrq.export.parity import MIN_PARITY_WINDOWS
from dualhrq.export.tensorrt_build import DEFAULT_WORKSPACE_MB

MIN_OPSET = 18


@dataclass(frozen=True)
class ExportOptions:
    fp16: bool = False
    int8: bool = False
    tensorrt: bool = False  # also implied by fp16 where TensorRT imports and a GPU is present
    force: bool = False  # keep variants that miss their parity bound, recording the miss
    patterns: Path | None = None  # pattern artifacts dir to pack; default: the checkpoint's own, if any
    opset: int = MIN_OPSET
    max_batch: int = 8  # TensorRT optimisation profile: batch 1..max_batch
    parity_samples: int = MIN_PARITY_WINDOWS
    carry_segments: int = 3
    # The carry check runs M whole segments per variant (and PyTorch's M once for all); on the 27M model on a
    # CPU that dominates an export, so it runs on this many windows, spread evenly over all parity windows.
    carry_samples: int = 64
    threads: int = 2  # ONNX Runtime intra-op threads for the parity runs
    external_data: bool | None = None  # None: by size (see segment.save_graph)
    timing_cache: Path | None = None  # TensorRT timing cache file
    workspace_mb: int = DEFAULT_WORKSPACE_MB
