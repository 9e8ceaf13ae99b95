"""Build the pattern library, its encoder and the regime model from the training window of the datasets.

Only the training window is used, and only entries whose outcome is known inside it: an entry's
``available_at`` is the close time of the bar ``label_horizon`` bars after its window, so a library built
here never holds an outcome from the held-out tail. Coarse bars are resampled from the training bars alone
for the same reason. The training window is the first ``data.train_fraction`` of the bars (of a list of
datasets: the bars before the earliest of their cuts), or, given ``until_ns``, the bars closed before that
time (so training and walk-forward validation can pass their own cut, e.g. the first test sample's time),
or, given ``fit_spans``, the bars inside those time spans (CPCV validation: the training groups around
its test groups). Each span is a window of its own: its coarse bars, features and entries come from its
bars alone, so no entry's window or outcome, and no coarse bar, reaches from one span across a test group
into the next.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dualhrq.config import DataConfig, ModelConfig, PatternsConfig
from dualhrq.data.bars import Bars
from dualhrq.data.resample import default_coarse_rule, resample
from dualhrq.data.sources import load_datasets
from dualhrq.errors import DataError
from dualhrq.features import log_returns, pattern_features, regime_features
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.regimes import RegimeModel, fit_regimes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingWindow:
    instrument: str
    fine: Bars  # the dataset's bars before the cut, or inside one fit span
    coarse: Bars  # resampled from those bars only
    regime_features: np.ndarray  # [len(fine), 20], NaN during warm-up


def training_windows(data_cfg: DataConfig, until_ns: int | None = None,
                     fit_spans: Sequence[tuple[int, int]] | None = None) -> list[TrainingWindow]:
    """The training windows of every dataset of ``data.dataset``: the bars closed before ``until_ns``, by
    default before the earliest of each dataset's own ``data.train_fraction`` of its bars (one time for all);
    given ``fit_spans`` (closed-open [start, end) ns, instead of ``until_ns``), one window per dataset and
    span with the bars inside it (a span without bars of a dataset adds none).
    NOTE: dualhrq.data.windows cuts by a fraction of complete samples, a little later: the library then ends
    before the held-out tail starts, never after it."""
    if fit_spans is not None and until_ns is not None:
        raise DataError("training_windows: give until_ns (one cut) or fit_spans (time spans), not both")
    datasets = load_datasets(data_cfg)
    if fit_spans is None:
        if until_ns is None:
            until_ns = min(int(ds.bars.t[int(len(ds.bars) * data_cfg.train_fraction)]) for ds in datasets)
        fit_spans = [(np.iinfo(np.int64).min, until_ns)]
    out = []
    for ds in datasets:
        for start, end in fit_spans:
            first, stop = np.searchsorted(ds.bars.t, (start, end), side="left")
            if stop <= first:
                continue
            fine = ds.bars.slice(int(first), int(stop))
            coarse = resample(fine, data_cfg.coarse_rule or default_coarse_rule(ds.timeframe))
            out.append(TrainingWindow(instrument=data_cfg.instrument or ds.instrument, fine=fine, coarse=coarse,
                                      regime_features=regime_features(fine, coarse)))
    return out


def fit_training_regimes(windows: Sequence[TrainingWindow], n_regimes: int,
                         seed: int) -> tuple[RegimeModel, list[np.ndarray]]:
    """One regime model fitted on every window's complete rows together, and each window's row indices (a
    window without any, e.g. an instrument whose history starts after a validation split's cut, adds none)."""
    rows = [np.flatnonzero(np.isfinite(w.regime_features).all(axis=1)) for w in windows]
    if not any(len(r) for r in rows):
        raise DataError(f"{'+'.join(w.instrument for w in windows)}: no training bar has complete regime "
                        "features; need more history")
    features = np.concatenate([w.regime_features[r] for w, r in zip(windows, rows)])
    return fit_regimes(features, n_regimes, seed), rows


def regime_table_inputs(window: TrainingWindow, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-bar log return, realised volatility, close time) of ``rows``: what ``regime_summary`` reports on."""
    return log_returns(window.fine.c)[rows], window.regime_features[rows, 0], window.fine.t[rows]


def build_library(model_cfg: ModelConfig, patterns_cfg: PatternsConfig, data_cfg: DataConfig,
                  seed: int = 0, until_ns: int | None = None, fit_spans: Sequence[tuple[int, int]] | None = None,
                  ) -> tuple[PatternLibrary, PatternEncoder, RegimeModel]:
    """One entry per training-window bar of every dataset with a complete pattern window, regime features
    and a known outcome; one encoder and one regime model over all of them. ``until_ns``, ``fit_spans``: the
    training windows (`training_windows`); an entry's window and outcome lie inside one of them.

    outcome = log return over the next ``data_cfg.label_horizon`` bars; available_at = close time of that bar.
    """
    windows = training_windows(data_cfg, until_ns, fit_spans)
    regimes, _ = fit_training_regimes(windows, model_cfg.num_regimes, seed)
    w, h = patterns_cfg.window, data_cfg.label_horizon
    entries = []
    for window in windows:
        fine = window.fine
        pf = pattern_features(fine, w)
        usable = np.isfinite(pf).all(axis=1) & np.isfinite(window.regime_features).all(axis=1)
        rows = np.flatnonzero(usable[: max(len(fine) - h, 0)])
        entries.append((window, pf[rows], rows, np.log(fine.c[rows + h] / fine.c[rows])))
    n_rows = sum(len(rows) for _, _, rows, _ in entries)
    if n_rows <= patterns_cfg.embed_dim:
        raise DataError(f"{data_cfg.name}: only {n_rows} complete pattern windows in the training window")
    encoder = PatternEncoder(patterns_cfg.embed_dim).fit(np.concatenate([pf for _, pf, _, _ in entries]))
    scale = float(np.concatenate([outcome for *_, outcome in entries]).std()) or 1.0
    library = PatternLibrary(patterns_cfg.embed_dim, patterns_cfg, outcome_scale=scale)
    for window, pf, rows, outcome in entries:
        fine = window.fine
        library.add(encoder.encode(pf), instrument=window.instrument, window_start=fine.t[rows - w],
                    window_end=fine.t[rows], available_at=fine.t[rows + h], outcome=outcome,
                    regime=regimes.predict(window.regime_features[rows]))
    log.info("built pattern library for %s: %d entries from %d training bars", data_cfg.name, len(library),
             sum(len(window.fine) for window in windows))
    return library, encoder, regimes
