"""Real-data feeds for parity checks: held-out windows of the checkpoint's dataset, built as training built them.

Random noise would exercise the graph where the model never operates (and hide, say, an fp16 overflow on
real volumes); the held-out tail of the training dataset, normalised with the checkpoint's own statistics
and given pattern context from its own library as of each window's time, is what the served model sees.
When the tail holds fewer windows than asked for, the validation slice (the purged end of the training
window, which training never fits either) makes up the rest: a 1% disagreement rate needs ~1,000 windows,
and EURUSD hourly's tail holds 839.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dualhrq.config import Config
from dualhrq.contract import as_feeds, zero_carry
from dualhrq.data.sources import load_datasets
from dualhrq.data.splits import validation_slice
from dualhrq.data.windows import build_dataset
from dualhrq.errors import ConfigurationError
from dualhrq.inputs import InputPipeline
from dualhrq.inputs.artifacts import ARTIFACTS_FILE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityFeeds:
    feeds: dict[str, np.ndarray]  # every graph input, batch first, zero initial carry
    source: str  # where they came from, in words (goes into the manifest)


def spread(n: int, k: int) -> np.ndarray:
    """int64 indices of min(k, n) of n rows spread evenly over all of them, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def parity_feeds(checkpoint: str | Path, config: Config, samples: int) -> ParityFeeds:
    """`samples` windows spread evenly over the held-out tail of `config.data.dataset` (of all its datasets),
    and over the validation slice before it (`train.val_fraction`) when the tail alone holds fewer.

    Uses the checkpoint's input pipeline (feature statistics, pattern library, instrument vocabulary) when
    it has one; a checkpoint without (e.g. untrained weights saved directly) gets one fitted on the training
    window here, which is what `dualhrq train` would have fitted. Every other window takes the
    regime-only path (pattern mask all zero), as a request does when retrieval fails open, so both paths
    through the graph are checked.
    """
    if samples < 2:
        raise ConfigurationError(f"samples: need at least 2 parity samples for a correlation, got {samples}")
    cfg = config
    has_artifacts = (Path(checkpoint) / ARTIFACTS_FILE).is_file()
    inputs = InputPipeline.load(checkpoint, cfg) if has_artifacts else None
    windows = build_dataset(load_datasets(cfg.data), cfg.model, cfg.data, inputs.stats if inputs else None,
                            cfg.patterns.window)
    if inputs is None:
        log.info("checkpoint has no input artifacts: fitting them on the training window of %s", cfg.data.name)
        inputs = InputPipeline.fit(cfg, windows)
    test = windows.test
    val = test[:0]
    if samples > len(test):
        _, val = validation_slice(windows.train, windows.t, windows.t_known, cfg.train.val_fraction)
    pool = np.concatenate([val, test])
    rows = pool[spread(len(pool), samples)]
    n, n_val = len(rows), int(np.isin(rows, val).sum())
    z_H, z_L = zero_carry(cfg.model, n)
    feeds = as_feeds({**inputs.dataset_inputs(windows, rows), "z_H": z_H, "z_L": z_L})
    feeds["pattern_context"][1::2], feeds["pattern_mask"][1::2] = 0.0, 0.0
    origin = "the checkpoint's input artifacts" if has_artifacts else "input artifacts fitted on the training window"
    held = f"{n - n_val} of {len(test)} held-out windows"
    if n_val:
        held += f" and {n_val} of the {len(val)} of the validation slice"
    source = (f"{cfg.data.name}: {held} ({windows.instrument} {windows.timeframe}), every other one regime-only; "
              f"{origin}")
    return ParityFeeds(feeds, source)
