"""Walk-forward and combinatorial purged (CPCV) splits that keep labels of training and test samples apart.

Every sample i carries a label interval [t[i], t_known[i]]: from its own time to the time its label is known.
A training sample whose label interval overlaps any test sample's label interval would let the model learn
from the very outcome it is tested on, so it is purged (López de Prado, AFML ch. 7). On top of that each
test block gets a fixed gap of ``purge_bars`` samples before it and an embargo of ``embargo_bars`` samples
after it, where serially correlated features would otherwise carry test information into training.
Windows, gaps and steps count samples (one sample per fine bar); times are any increasing integers
(nanoseconds since the epoch in practice).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np

from dualhrq.config import ValidateConfig
from dualhrq.errors import ConfigurationError, DataError


@dataclass(frozen=True)
class Split:
    """One fit/evaluate round: sorted sample indices to train on and to test on."""

    index: int
    train: np.ndarray
    test: np.ndarray
    test_groups: tuple[int, ...] = ()  # CPCV only: which groups form the test set


@dataclass(frozen=True)
class CPCV:
    """The C(N, k) splits of combinatorial purged cross-validation and the φ backtest paths they assemble."""

    splits: list[Split]
    groups: list[np.ndarray]  # N contiguous blocks of sample indices
    paths: list[list[int]]  # paths[p][g]: the split whose test predictions fill group g on path p


def check_label_times(t: np.ndarray, t_known: np.ndarray) -> None:
    """Refuse label times that would make purging meaningless: unsorted times or labels known before the sample."""
    if t.ndim != 1 or t.shape != t_known.shape:
        raise DataError(f"t and t_known must be 1-D arrays of the same length, got {t.shape} and {t_known.shape}")
    if len(t) and np.any(np.diff(t) <= 0):
        bad = _first(np.diff(t) <= 0) + 1
        raise DataError(f"t: sample times must be strictly increasing (first violation at index {bad})")
    if np.any(t_known < t):
        raise DataError(f"t_known: a label is known before its sample time (first at index {_first(t_known < t)})")


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _blocks(test: np.ndarray) -> list[np.ndarray]:
    """Contiguous runs of a sorted index array: each run is purged and embargoed as one block."""
    if not len(test):
        return []
    breaks = np.flatnonzero(np.diff(test) != 1) + 1
    return np.split(test, breaks)


def label_hulls(indices: np.ndarray, t: np.ndarray, t_known: np.ndarray) -> list[tuple[int, int]]:
    """(first sample time, last label time) of each contiguous run of the sorted ``indices`` into t/t_known:
    the span a run's samples and labels cover, that no training label may overlap."""
    return _hulls(_blocks(indices), t, t_known)


def _hulls(blocks: list[np.ndarray], t: np.ndarray, t_known: np.ndarray) -> list[tuple[int, int]]:
    return [(int(t[b[0]]), int(t_known[b].max())) for b in blocks]


def overlaps(t: np.ndarray, t_known: np.ndarray, hulls: list[tuple[int, int]]) -> np.ndarray:
    """bool [len(t)]: the label interval [t, t_known] of the sample meets one of ``hulls``."""
    hit = np.zeros(len(t), dtype=bool)
    for lo, hi in hulls:
        hit |= (t <= hi) & (t_known >= lo)
    return hit


def purge(
    candidates: np.ndarray,
    test: np.ndarray,
    t: np.ndarray,
    t_known: np.ndarray,
    purge_bars: int,
    embargo_bars: int,
) -> np.ndarray:
    """The candidate training indices that survive the label-interval purge, the purge gap and the embargo."""
    # The hull of each block's label intervals: the block is contiguous, so no outside sample falls inside it.
    blocks = _blocks(test)
    keep = ~overlaps(t, t_known, _hulls(blocks, t, t_known))
    for block in blocks:
        first, last = int(block[0]), int(block[-1])
        keep[max(first - purge_bars, 0) : first] = False
        keep[last + 1 : last + 1 + embargo_bars] = False
    keep[test] = False
    return candidates[keep[candidates]]


def validation_slice(train: np.ndarray, t: np.ndarray, t_known: np.ndarray,
                     fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices of a training window: the validation slice is its last ``fraction`` of
    samples, and the fit samples whose labels reach into it are purged."""
    n_val = int(round(len(train) * fraction))
    if n_val == 0:
        return train, train[:0]
    val = train[len(train) - n_val:]
    return purge(train[:len(train) - n_val], val, t, t_known, 0, 0), val


def walk_forward_splits(cfg: ValidateConfig, t: np.ndarray, t_known: np.ndarray) -> list[Split]:
    """Test windows of ``cfg.test_bars`` every ``cfg.step_bars``, each trained on the ``cfg.train_bars`` before
    its purge gap (``cfg.purge_bars``), with ``cfg.embargo_bars`` after each test window kept out.

    Anchored splits (``cfg.anchored``) train on everything from the first sample instead of a rolling window.
    The last window must fit whole: a partial test window would be scored on fewer samples than the others claim.
    """
    train_bars, test_bars, step_bars = cfg.train_bars, cfg.test_bars, cfg.step_bars
    purge_bars, embargo_bars, anchored = cfg.purge_bars, cfg.embargo_bars, cfg.anchored
    check_label_times(t, t_known)
    n = len(t)
    first_test = train_bars + purge_bars
    if first_test + test_bars > n:
        raise ConfigurationError(
            f"validate: {n} samples are too few for train_bars + purge_bars + test_bars = {first_test + test_bars}"
        )
    splits = []
    for k, start in enumerate(range(first_test, n - test_bars + 1, step_bars)):
        test = np.arange(start, start + test_bars)
        window_start = 0 if anchored else start - purge_bars - train_bars
        train = purge(np.arange(window_start, start - purge_bars), test, t, t_known, purge_bars, embargo_bars)
        if len(train) == 0:
            raise ConfigurationError(
                f"validate: split {k} has no training sample left after purging labels that reach into its test window"
                " (labels longer than train_bars?)"
            )
        splits.append(Split(index=k, train=train, test=test))
    return splits


def cpcv_paths(n_groups: int, k_test: int) -> list[list[int]]:
    """Assemble φ = C(N−1, k−1) paths: path p takes each group's p-th test appearance (in split order)."""
    appearances: list[list[int]] = [[] for _ in range(n_groups)]
    for s, test_groups in enumerate(combinations(range(n_groups), k_test)):
        for g in test_groups:
            appearances[g].append(s)
    n_paths = comb(n_groups - 1, k_test - 1)
    return [[appearances[g][p] for g in range(n_groups)] for p in range(n_paths)]


def cpcv_splits(cfg: ValidateConfig, t: np.ndarray, t_known: np.ndarray) -> CPCV:
    """All C(N, k) ways to test on k of N contiguous groups and train on the purged, embargoed rest
    (N = ``cfg.cpcv_groups``, k = ``cfg.cpcv_test_groups``, gaps ``cfg.purge_bars`` and ``cfg.embargo_bars``)."""
    n_groups, k_test, purge_bars, embargo_bars = cfg.cpcv_groups, cfg.cpcv_test_groups, cfg.purge_bars, cfg.embargo_bars
    check_label_times(t, t_known)
    if not 1 <= k_test < n_groups:
        raise ConfigurationError(f"validate: cpcv_test_groups must be in 1..cpcv_groups-1, got {k_test} of {n_groups}")
    if len(t) < n_groups:
        raise ConfigurationError(f"validate: {len(t)} samples are too few for {n_groups} CPCV groups")
    everything = np.arange(len(t))
    groups = np.array_split(everything, n_groups)
    splits = []
    for s, test_groups in enumerate(combinations(range(n_groups), k_test)):
        test = np.concatenate([groups[g] for g in test_groups])
        train = purge(everything, test, t, t_known, purge_bars, embargo_bars)
        if len(train) == 0:
            raise ConfigurationError(f"validate: CPCV split {s} has no training sample left after purge and embargo")
        splits.append(Split(index=s, train=train, test=test, test_groups=test_groups))
    return CPCV(splits=splits, groups=groups, paths=cpcv_paths(n_groups, k_test))


def splits_from_config(cfg: ValidateConfig, t: np.ndarray, t_known: np.ndarray) -> list[Split] | CPCV:
    """The splits that ``cfg.scheme`` asks for."""
    if cfg.scheme == "cpcv":
        return cpcv_splits(cfg, t, t_known)
    return walk_forward_splits(cfg, t, t_known)
