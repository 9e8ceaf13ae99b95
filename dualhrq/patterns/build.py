"""Build the pattern library, its encoder and the regime model from the training window of one dataset.

Only the training window is used, and only entries whose outcome is known inside it: an entry's
``available_at`` is the close time of the bar ``label_horizon`` bars after its window, so a library built
here never holds an outcome from the held-out tail. Coarse bars are resampled from the training bars alone
for the same reason. The training window is the first ``data.train_fraction`` of the bars, or, given
``until_ns``, the bars closed before that time (so training and walk-forward validation can pass their own
cut, e.g. the first test sample's time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dualhrq.config import DataConfig, ModelConfig, PatternsConfig
from dualhrq.data.bars import Bars
from dualhrq.data.resample import default_coarse_rule, resample
from dualhrq.data.sources import load_dataset
from dualhrq.errors import DataError
from dualhrq.features import log_returns, pattern_features, regime_features
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.regimes import RegimeModel, fit_regimes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingWindow:
    instrument: str
    fine: Bars  # the first train_fraction of the dataset's bars
    coarse: Bars  # resampled from those bars only
    regime_features: np.ndarray  # [len(fine), 20], NaN during warm-up


def training_window(dataset: str, data_cfg: DataConfig, until_ns: int | None = None) -> TrainingWindow:
    ds = load_dataset(dataset)
    if until_ns is None:
        n_train = int(len(ds.bars) * data_cfg.train_fraction)
    else:
        n_train = int(np.searchsorted(ds.bars.t, until_ns, side="left"))
    fine = ds.bars.slice(0, n_train)
    coarse = resample(fine, data_cfg.coarse_rule or default_coarse_rule(ds.timeframe))
    return TrainingWindow(instrument=data_cfg.instrument or ds.instrument, fine=fine, coarse=coarse,
                          regime_features=regime_features(fine, coarse))


def fit_training_regimes(window: TrainingWindow, n_regimes: int, seed: int) -> tuple[RegimeModel, np.ndarray]:
    """The regime model fitted on the window's complete rows, and those rows' indices."""
    rows = np.flatnonzero(np.isfinite(window.regime_features).all(axis=1))
    if not len(rows):
        raise DataError(f"{window.instrument}: no training bar has complete regime features; need more history")
    return fit_regimes(window.regime_features[rows], n_regimes, seed), rows


def regime_table_inputs(window: TrainingWindow, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per-bar log return, realised volatility, close time) of ``rows``: what ``regime_summary`` reports on."""
    return log_returns(window.fine.c)[rows], window.regime_features[rows, 0], window.fine.t[rows]


def build_library(dataset: str, model_cfg: ModelConfig, patterns_cfg: PatternsConfig, data_cfg: DataConfig,
                  seed: int = 0, until_ns: int | None = None) -> tuple[PatternLibrary, PatternEncoder, RegimeModel]:
    """One entry per training-window bar with a complete pattern window, regime features and a known outcome.

    outcome = log return over the next ``data_cfg.label_horizon`` bars; available_at = close time of that bar.
    """
    window = training_window(dataset, data_cfg, until_ns)
    regimes, _ = fit_training_regimes(window, model_cfg.num_regimes, seed)
    fine, w, h = window.fine, patterns_cfg.window, data_cfg.label_horizon
    pf = pattern_features(fine, w)
    n = len(fine)
    usable = np.isfinite(pf).all(axis=1) & np.isfinite(window.regime_features).all(axis=1)
    rows = np.flatnonzero(usable[: max(n - h, 0)])
    if len(rows) <= patterns_cfg.embed_dim:
        raise DataError(f"{dataset}: only {len(rows)} complete pattern windows in the training window")
    outcome = np.log(fine.c[rows + h] / fine.c[rows])
    encoder = PatternEncoder(patterns_cfg.embed_dim).fit(pf[rows])
    library = PatternLibrary(patterns_cfg.embed_dim, patterns_cfg, outcome_scale=float(outcome.std()) or 1.0)
    library.add(encoder.encode(pf[rows]), instrument=window.instrument, window_start=fine.t[rows - w],
                window_end=fine.t[rows], available_at=fine.t[rows + h], outcome=outcome,
                regime=regimes.predict(window.regime_features[rows]))
    log.info("built pattern library for %s: %d entries from %d training bars", dataset, len(library), n)
    return library, encoder, regimes
