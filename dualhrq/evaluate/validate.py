"""Walk-forward (or CPCV) validation of the HRM next to simple baselines, on identical splits.

For every predictor and split: fit on the purged training samples (walk-forward may continue from the
previous split's state), predict the test samples, and save the split's predictions and metrics as JSON so
that an interrupted run resumes where it stopped. Leakage checks run every time; a leak makes the run fail.
The statistics (SPA, Reality Check, Deflated Sharpe Ratio) and the report come last.

Models plug in through the small ``Predictor`` interface; ``PredictorFactory`` builds one over a dataset
(the permuted-label control builds a second one over permuted labels).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm import tqdm

from dualhrq.config import Config, ValidateConfig
from dualhrq.data.bars import Bars, Dataset
from dualhrq.data.resample import resample, visible_counts
from dualhrq.data.sources import load_datasets
from dualhrq.data.splits import CPCV, Split, check_label_times, splits_from_config
from dualhrq.data.windows import WindowDataset, build_dataset
from dualhrq.errors import ConfigurationError, DataError, InferenceError
from dualhrq.evaluate import leakage
from dualhrq.evaluate.baselines import (
    BuyAndHold,
    LogisticDirection,
    MomentumSign,
    MultinomialActions,
    OneBarReversal,
    RidgeForecast,
    StateOnly,
)
from dualhrq.evaluate.execution import Fills, Market, close_fill_market, default_fee_bps, market_for
from dualhrq.evaluate.fanout import Runner, Sequential
from dualhrq.evaluate.ledger import Trial, bars_fingerprint, config_hash
from dualhrq.evaluate.metrics import Predictions, StrategyMetrics, compute_metrics, periods_per_year, sharpe_ratio
from dualhrq.evaluate.overfitting import probability_of_backtest_overfitting
from dualhrq.evaluate.report import Comparison, SplitInfo, ValidationResult, write_report
from dualhrq.evaluate.statistics import SPAResult, deflated_sharpe_ratio, spa_test
from dualhrq.features import BAR_FEATURES, REGIME_FEATURES, bar_features, pattern_features, regime_features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationData:
    """Everything validation needs, one row per sample, samples in time order.

    ``returns[i]`` is the log return of holding one unit from sample i to sample i+1 (what a position taken
    at sample i earns); ``t_known[i]`` is when *all* of sample i's training labels are known, so that purging
    by [t, t_known] keeps every label out of reach. ``labels`` are further per-sample training targets (the
    HRM's out_a/out_b/action/quantity) and ``inputs`` the model's own inputs (token windows...): validation
    never reads them, but permutes ``labels`` together with ``returns`` for the permuted-label control.
    ``probe`` recomputes the features on a prefix of the bars, for the truncation check. ``bars`` with
    ``bar_index`` (sample i was decided at the close of ``bars[bar_index[i]]``) let the execution model fill
    at other prices than the sample's close (dualhrq.evaluate.execution).
    """

    name: str
    t: np.ndarray  # int64 ns since the epoch, strictly increasing
    t_known: np.ndarray
    returns: np.ndarray
    features: np.ndarray
    feature_names: tuple[str, ...] = ()
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    states: np.ndarray | None = None  # the label rule's position state per sample, from the bars (not permuted)
    inputs: object = None
    probe: leakage.FeatureProbe | None = None
    bars: Bars | None = None
    bar_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.t)
        check_label_times(self.t, self.t_known)
        if self.returns.shape != (n,) or not np.all(np.isfinite(self.returns)):
            raise DataError(f"returns: expected {n} finite values, got shape {self.returns.shape}")
        if self.features.ndim != 2 or len(self.features) != n:
            raise DataError(f"features: expected a 2-D array with {n} rows, got shape {self.features.shape}")
        if not np.all(np.isfinite(self.features)):
            row = int(np.flatnonzero(~np.isfinite(self.features).all(axis=1))[0])
            raise DataError(f"features: non-finite value in sample {row}")
        if self.feature_names and len(self.feature_names) != self.features.shape[1]:
            raise DataError(f"feature_names: {len(self.feature_names)} names for {self.features.shape[1]} columns")
        for key, y in self.labels.items():
            if len(y) != n:
                raise DataError(f"labels.{key}: {len(y)} rows for {n} samples")
        if self.states is not None and (self.states.shape != (n,) or not np.isin(self.states, (0, 1, 2)).all()):
            raise DataError(f"states: expected {n} position states in 0..2 (flat, long, short)")
        if (self.bars is None) != (self.bar_index is None):
            raise DataError("bars and bar_index: give both or neither")
        if self.bar_index is not None and (self.bar_index.shape != (n,) or self.bar_index.min() < 0
                                           or self.bar_index.max() >= len(self.bars)):
            raise DataError(f"bar_index: expected {n} indices into the {len(self.bars)} bars")

    def __len__(self) -> int:
        return len(self.t)

    def names(self) -> list[str]:
        return list(self.feature_names) or [f"feature_{j}" for j in range(self.features.shape[1])]

    def permuted(self, seed: int) -> ValidationData:
        """The same samples with returns and labels shuffled by one permutation: no feature can predict them."""
        order = np.random.default_rng(seed).permutation(len(self))
        return replace(
            self,
            returns=self.returns[order],
            labels={k: np.asarray(y)[order] for k, y in self.labels.items()},
            inputs=replace(self.inputs, label_seed=seed) if isinstance(self.inputs, PanelRows) else self.inputs,
        )

    def data_fingerprint(self) -> str:
        """Identifies the data itself (the bars), whatever samples and features a config makes of it: the run
        ledger counts trials per data."""
        if self.bars is not None:
            return bars_fingerprint(self.bars)
        h = hashlib.sha256(self.name.encode())
        for a in (self.t, self.returns):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def fingerprint(self) -> str:
        """Identifies the data, so a resumed run never reuses results computed on other data."""
        h = hashlib.sha256(self.name.encode())
        for a in (self.t, self.t_known, self.returns, self.features):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class PanelRows:
    """One instrument's samples inside the samples of every dataset of a list (``data.dataset``): validation
    runs per instrument, and the HRM for it trains on every instrument's history up to each split."""

    windows: WindowDataset  # every dataset's samples, in time order
    instrument: int  # index into windows.instruments
    label_seed: int | None = None  # the permuted-label control: every instrument's labels are shuffled

    @property
    def rows(self) -> np.ndarray:
        return self.windows.of_instrument(self.instrument)

    def labels(self, key: str) -> np.ndarray:
        """A training label of every sample (out_a, out_b, action, quantity); under the control, shuffled
        within each instrument, so that no instrument's labels can tell the model another's."""
        y = np.asarray(getattr(self.windows, key))
        if self.label_seed is None:
            return y
        y = y.copy()
        for i in range(len(self.windows.instruments)):
            rows = self.windows.of_instrument(i)
            y[rows] = y[rows][np.random.default_rng([self.label_seed, i]).permutation(len(rows))]
        return y


class Predictor(Protocol):
    """What validation needs from a model. ``fit`` returns a state handle (e.g. a checkpoint path) that the
    next split's ``fit`` may continue from; a JSON-serialisable handle also survives an interrupted run."""

    name: str

    def fit(self, train_idx: np.ndarray, resume_from: object | None) -> object: ...

    def predict(self, test_idx: np.ndarray) -> Predictions: ...


# Builds a predictor over a dataset; the second argument is a directory it may write checkpoints into.
PredictorFactory = Callable[[ValidationData, Path], Predictor]


def baseline_factories(cfg: ValidateConfig) -> list[PredictorFactory]:
    """Buy-and-hold, momentum sign, one-bar reversal, ridge, logistic, state-only and the multinomial logistic
    on the actions, with the config's fixed settings. The position states come from the bars (``states``),
    the action labels from the (maybe permuted) labels."""
    return [
        lambda d, _: BuyAndHold(d.returns),
        lambda d, _: MomentumSign(d.returns, cfg.momentum_lookback),
        lambda d, _: OneBarReversal(d.returns),
        lambda d, _: RidgeForecast(d.features, d.returns, cfg.ridge_alpha),
        lambda d, _: LogisticDirection(d.features, d.returns, cfg.logistic_c),
        lambda d, _: StateOnly(*_states_and_actions(d)),
        lambda d, _: MultinomialActions(d.features, *_states_and_actions(d), cfg.logistic_c),
    ]


def _states_and_actions(data: ValidationData) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of the label baselines; validation data without them cannot run those baselines."""
    if data.states is None or "action" not in data.labels:
        raise DataError(f"{data.name}: the state-only and multinomial baselines need `states` and `labels.action` "
                        "(dualhrq.evaluate.validate.validation_data provides both)")
    return data.states, np.asarray(data.labels["action"])


def bar_feature_rows(fine: Bars, coarse_rule: str, pattern_window: int) -> np.ndarray:
    """Raw features of every fine bar as one row: the bar's own, the last closed coarse bar's, the regime and
    the pattern vector. What the HRM's tokens hold at that bar, before normalisation (whose statistics would
    come from a training window that differs per split)."""
    coarse = resample(fine, coarse_rule)
    k = visible_counts(coarse.t, fine.t)
    coarse_rows = np.full((len(fine), len(BAR_FEATURES)), np.nan)
    coarse_rows[k > 0] = bar_features(coarse)[k[k > 0] - 1]
    return np.concatenate(
        [bar_features(fine), coarse_rows, regime_features(fine, coarse), pattern_features(fine, pattern_window)], axis=1
    )


def validation_data(cfg: Config, dataset: Dataset) -> ValidationData:
    """The samples `dualhrq.data.build_dataset` makes of ``dataset`` (one per fine bar), scored on the next bar's
    return, with raw feature rows for the baselines and the leakage checks; the window dataset itself rides
    along as ``inputs`` for the HRM."""
    window = cfg.patterns.window
    windows = build_dataset(dataset, cfg.model, cfg.data, pattern_window=window)
    fine = dataset.bars
    probe = leakage.FeatureProbe(
        len(fine), lambda c: bar_feature_rows(fine.slice(0, c), windows.coarse_rule, window)
    )
    idx = windows.bar_index
    rows = probe.features_upto(len(fine))[idx]
    names = [f"fine_{f}" for f in BAR_FEATURES] + [f"coarse_{f}" for f in BAR_FEATURES]
    names += [f"regime_{f}" for f in REGIME_FEATURES]
    names += [f"pattern_{j}" for j in range(rows.shape[1] - len(names))]
    return ValidationData(
        name=f"{dataset.name} ({dataset.instrument} {dataset.timeframe})",
        t=windows.t,
        t_known=windows.t_known,
        returns=np.log(fine.c[idx + 1] / fine.c[idx]),  # samples are consecutive fine bars with labels ahead
        features=rows,
        feature_names=tuple(names),
        labels={"out_a": windows.out_a, "out_b": windows.out_b, "action": windows.action, "quantity": windows.quantity},
        states=windows.state,
        inputs=windows,
        probe=probe,
        bars=fine,
        bar_index=np.asarray(idx, dtype=np.int64),
    )


def load_validation_data(cfg: Config) -> ValidationData:
    """`validation_data` of the config's ``data.dataset`` (a bundled name or a CSV/Parquet path)."""
    if len(cfg.data.datasets) > 1:
        raise ConfigurationError(f"data.dataset: {len(cfg.data.datasets)} datasets validate one by one "
                                 "(load_validation_panel)")
    return validation_data(cfg, load_datasets(cfg.data)[0])


def load_validation_panel(cfg: Config) -> dict[str, ValidationData]:
    """Each instrument of a list of datasets as its own validation data (its own samples, features and
    baselines), by instrument; the HRM's inputs are every instrument's samples (`PanelRows`)."""
    datasets = load_datasets(cfg.data)
    # Validation never reads the panel's own train/test split: no cut, so histories need not overlap.
    panel = build_dataset(datasets, cfg.model, cfg.data, pattern_window=cfg.patterns.window,
                          test_from=np.iinfo(np.int64).max)
    return {panel.instruments[i]: replace(validation_data(cfg, d), inputs=PanelRows(panel, i))
            for i, d in enumerate(datasets)}


# ---------------------------------------------------------------- running the splits


def _json_state(state: object) -> object:
    """The state as saved for a resumed run; one JSON cannot hold is dropped (the next split then starts fresh)."""
    try:
        json.dumps(state)
        return state
    except TypeError:
        log.warning("fit() returned a %s, not JSON: a resumed run restarts the next split fresh", type(state).__name__)
        return None


def _split_fingerprint(data_fp: str, name: str, cfg: Config, split: Split) -> str:
    """Identifies a split's result: data, predictor, every setting that can change it (the configuration
    tried, as the run ledger identifies it), and the split itself."""
    h = hashlib.sha256(f"{data_fp}/{name}/{config_hash(cfg)}/".encode())
    h.update(split.train.tobytes())
    h.update(split.test.tobytes())
    return h.hexdigest()[:16]


def _load_saved(path: Path, fingerprint: str) -> tuple[Predictions, object] | None:
    """Predictions and state of a split saved by an earlier run of the same settings, or None (missing,
    unreadable or stale)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved["fingerprint"] != fingerprint:
            return None
        pred = Predictions(np.asarray(saved["position"], dtype=float), np.asarray(saved["forecast"], dtype=float))
        return pred, saved["state"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, InferenceError) as e:
        log.warning("%s is unreadable (%s): recomputing that split", path, e)
        return None


def _run_splits(
    predictor: Predictor,
    data: ValidationData,
    splits: list[Split],
    cfg: Config,
    out_dir: Path,
    *,
    score: Callable[[Predictions, np.ndarray], StrategyMetrics],  # (predictions, sample indices)
    resume: bool,
    continue_states: bool,
    tick: Callable[[], None] | None = None,
) -> list[tuple[Predictions, StrategyMetrics]]:
    """Fit, predict and score every split, or load what an earlier run of the same splits already saved.
    Loaded splits are scored again: scoring settings may have changed since (they are not in the fingerprint)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data_fp = data.fingerprint()
    state: object = None
    out = []
    for split in splits:
        path = out_dir / f"split_{split.index:04d}.json"
        fp = _split_fingerprint(data_fp, predictor.name, cfg, split)
        saved = _load_saved(path, fp) if resume else None
        if saved is not None:
            pred, state = saved
        else:
            state = predictor.fit(split.train, state if continue_states else None)
            pred = predictor.predict(split.test)
            if len(pred) != len(split.test):
                raise DataError(f"{predictor.name}: {len(pred)} predictions for {len(split.test)} test samples")
        metrics = score(pred, split.test)
        if saved is None:
            record = {
                "fingerprint": fp,
                "predictor": predictor.name,
                "split": split.index,
                "state": _json_state(state),
                "metrics": metrics.to_dict(),
                "position": pred.position.tolist(),
                "forecast": pred.forecast.tolist(),
            }
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(path)  # atomic: an interruption never leaves a half-written split behind
        out.append((pred, metrics))
        if tick is not None:
            tick()
    return out


def _split_info(data: ValidationData, split: Split) -> SplitInfo:
    def day(i: int) -> str:
        return pd.Timestamp(int(data.t[i])).strftime("%Y-%m-%d %H:%M")

    return SplitInfo(
        index=split.index,
        n_train=len(split.train),
        n_test=len(split.test),
        train_start=day(int(split.train[0])),
        train_end=day(int(split.train[-1])),
        test_start=day(int(split.test[0])),
        test_end=day(int(split.test[-1])),
        test_groups=split.test_groups,
    )


def _assemble_path(cpcv: CPCV, path: list[int], preds: list[Predictions]) -> tuple[np.ndarray, Predictions]:
    """Stitch one CPCV backtest path: each group's predictions from the split the path assigns it."""
    idx, parts = [], []
    for g, s in enumerate(path):
        mask = np.isin(cpcv.splits[s].test, cpcv.groups[g])
        idx.append(cpcv.splits[s].test[mask])
        parts.append(Predictions(preds[s].position[mask], preds[s].forecast[mask]))
    return np.concatenate(idx), Predictions.concat(parts)


def _scorer(on: ValidationData, m: Market, periods: float) -> Callable[..., StrategyMetrics]:
    """score(predictions, index, fills=None): the metrics of predictions at index, filled by the market unless
    their fills are given."""
    def score(pred: Predictions, idx: np.ndarray, fills: Fills | None = None) -> StrategyMetrics:
        return compute_metrics(pred, on.returns[idx], m.execute(pred.position, idx) if fills is None else fills,
                               periods=periods)
    return score


@dataclass(frozen=True)
class _Task:
    """One predictor over every split, and its permuted-label control: what a runner ships."""

    factory: PredictorFactory
    cfg: Config
    splits: list[Split]
    control_splits: list[Split]
    out: Path
    resume: bool
    continue_states: bool
    periods: float
    tick: Callable[[], None] | None  # progress, where the task runs in the driver
    names: set[str] | None  # the names taken so far, where the task runs in the driver


@dataclass(frozen=True)
class _TaskResult:
    name: str
    scored: list[tuple[Predictions, StrategyMetrics]]
    control: list[Predictions]


def _claim(names: set[str], name: str) -> None:
    if name in names:
        raise ConfigurationError(f"predictors: two are named {name!r}")
    names.add(name)


def _predictor_task(data: ValidationData, task: _Task) -> _TaskResult:
    cfg, vcfg = task.cfg, task.cfg.validate
    market = market_for(vcfg.execution, cfg.data.cost_bps, data.returns, data.bars, data.bar_index)
    predictor = task.factory(data, task.out / "models")
    if task.names is not None:
        _claim(task.names, predictor.name)
    scored = _run_splits(predictor, data, task.splits, cfg, task.out / "splits" / predictor.name,
                         score=_scorer(data, market, task.periods), resume=task.resume,
                         continue_states=task.continue_states, tick=task.tick)
    control: list[Predictions] = []
    if task.control_splits:
        permuted = data.permuted(vcfg.seed)
        # Permuted returns are no market to fill in: the control is scored on them with the plain close fill.
        control_score = _scorer(permuted, close_fill_market(permuted.returns, market.fee_bps), task.periods)
        control = [pr for pr, _ in _run_splits(
            task.factory(permuted, task.out / "control" / "models"), permuted, task.control_splits, cfg,
            task.out / "control" / predictor.name, score=control_score, resume=task.resume,
            continue_states=task.continue_states, tick=task.tick)]
    return _TaskResult(predictor.name, scored, control)


def _run_predictors(cfg: Config, data: ValidationData, predictors: Sequence[PredictorFactory], splits: list[Split],
                    control_splits: list[Split], out: Path, *, resume: bool, periods: float, runner: Runner,
                    progress: bool) -> list[_TaskResult]:
    """Every predictor's task on the runner, behind one progress bar."""
    vcfg = cfg.validate
    continue_states = vcfg.continue_from_previous and vcfg.scheme == "walk_forward"
    total = len(predictors) * (len(splits) + len(control_splits))
    here = isinstance(runner, Sequential)  # tasks run in this process, one after another
    names: set[str] = set()
    if not here:  # names first: two tasks running at once must never write one directory
        for factory in predictors:
            _claim(names, factory(data, out / "models").name)
    with tqdm(total=total, desc="validate", unit="split", disable=not progress,
              mininterval=0.1 if sys.stderr.isatty() else 10.0) as bar:
        tasks = [_Task(factory, cfg, splits, control_splits, out, resume, continue_states, periods,
                       (lambda: bar.update(1)) if here else None, names if here else None) for factory in predictors]
        if not here:
            bar.set_postfix_str(runner.name)
        results = runner.run(_predictor_task, data, tasks)
        if not here:
            bar.update(total)
    return results


def run_validation(
    cfg: Config,
    data: ValidationData,
    predictors: Sequence[PredictorFactory],
    out_dir: str | Path,
    *,
    resume: bool = True,
    candidate: str = "hrm",
    comparisons: Sequence[tuple[str, str]] = (),
    seeds: Sequence[str] = (),
    earlier: Sequence[Trial] = (),
    runner: Runner | None = None,
    progress: bool = True,
) -> ValidationResult:
    """Validate every predictor on the same splits, check for leakage, test the candidate, write the report.

    ``comparisons`` are pairs (a, b) reported side by side with an SPA test of a against b, e.g.
    ("hrm", "hrm_regime_only") for the price of failing open. ``seeds`` name the candidate's reruns with other
    seeds: reported as a spread, tested against no one. ``earlier`` are the trials of earlier runs on the same
    data (from the run ledger): the Deflated Sharpe Ratio counts them, PBO takes those on the same samples.
    ``runner`` runs each predictor's splits (here one after another by default; dualhrq.evaluate.fanout).
    Returns the result; ``result.leak_found`` tells the caller to fail.
    """
    if not predictors:  # nothing to score: the report, the statistics and the CPCV paths all need one
        raise ConfigurationError("predictors: none given; validation needs at least one predictor")
    vcfg = cfg.validate
    out = Path(out_dir)
    market = market_for(vcfg.execution, cfg.data.cost_bps, data.returns, data.bars, data.bar_index)
    periods = vcfg.periods_per_year or periods_per_year(data.t)
    layout = splits_from_config(vcfg, data.t, data.t_known)
    splits = layout.splits if isinstance(layout, CPCV) else layout
    report = _check_features(data, vcfg)
    control_splits = splits[: vcfg.permuted_control_splits]
    results = _run_predictors(cfg, data, predictors, splits, control_splits, out, resume=resume, periods=periods,
                              runner=runner or Sequential(), progress=progress)
    _check_permuted_labels(report, data, vcfg.seed, control_splits, results)
    score = _scorer(data, market, periods)
    oos = _out_of_sample(layout, {r.name: [pr for pr, _ in r.scored] for r in results}, score)
    _check_forecasts(report, data, vcfg, oos)
    result = _validation_result(cfg, data, splits, results, oos, market, score, periods, report, candidate, seeds)
    _add_statistics(result, vcfg, comparisons, _earlier_trials(result, earlier, market, oos.index))
    paths = write_report(result, out)
    log.info("validation report written to %s", paths["markdown"])
    return result


def _check_features(data: ValidationData, vcfg: ValidateConfig) -> leakage.LeakageReport:
    """The leakage checks that need no model: future correlation of the features, and truncation."""
    report = leakage.LeakageReport()
    worst, found = leakage.future_correlation(
        data.features, data.returns, lags=vcfg.leak_lags, max_corr=vcfg.leak_max_corr, names=data.names()
    )
    report.max_future_corr["features"] = worst
    report.record("future_correlation", found)
    if data.probe is not None:
        report.record("truncation", leakage.truncation_check(data.probe, n_cuts=vcfg.truncation_cuts, seed=vcfg.seed))
    else:
        report.skip("truncation", "the dataset came without a feature probe")
    return report


def _check_permuted_labels(report: leakage.LeakageReport, data: ValidationData, seed: int,
                           control_splits: list[Split], results: list[_TaskResult]) -> None:
    """The permuted-label control: forecasts of returns a predictor never saw in order must not track them."""
    if not control_splits:
        report.skip("permuted_label", "permuted_control_splits is 0")
        return
    permuted = data.permuted(seed)
    test = np.concatenate([s.test for s in control_splits])
    for r in results:
        report.record(
            "permuted_label",
            leakage.permuted_label_finding(r.name, Predictions.concat(r.control).forecast, permuted.returns[test]),
        )


@dataclass(frozen=True)
class _OutOfSample:
    """The out-of-sample series every predictor is judged on."""

    index: np.ndarray  # sample indices, in order
    predictions: dict[str, Predictions]  # per predictor, aligned with index
    path_sharpes: dict[str, list[float]]  # CPCV only
    notes: list[str]


def _out_of_sample(layout: CPCV | list[Split], preds: dict[str, list[Predictions]],
                   score: Callable[..., StrategyMetrics]) -> _OutOfSample:
    """Walk-forward: the test windows one after another; CPCV: backtest path 0, with every path's Sharpe ratio."""
    if not isinstance(layout, CPCV):
        return _OutOfSample(np.concatenate([s.test for s in layout]),
                            {p: Predictions.concat(ps) for p, ps in preds.items()}, {}, [])
    overall_pred: dict[str, Predictions] = {}
    path_sharpes: dict[str, list[float]] = {}
    # Each path is a full out-of-sample history; the first one stands for the whole in the statistics.
    for p, ps in preds.items():
        assembled = [_assemble_path(layout, path, ps) for path in layout.paths]
        path_sharpes[p] = [score(pr, idx).sharpe for idx, pr in assembled]
        oos_idx, overall_pred[p] = assembled[0]
    notes = [f"CPCV: overall figures and statistics use backtest path 0 of {len(layout.paths)}."]
    return _OutOfSample(oos_idx, overall_pred, path_sharpes, notes)


def _check_forecasts(report: leakage.LeakageReport, data: ValidationData, vcfg: ValidateConfig,
                     oos: _OutOfSample) -> None:
    """Future correlation of every predictor's out-of-sample forecasts."""
    for p, pr in oos.predictions.items():
        worst, found = leakage.future_correlation(
            pr.forecast, data.returns, lags=vcfg.leak_lags, max_corr=vcfg.leak_max_corr, names=[p], index=oos.index
        )
        report.max_future_corr[p] = worst
        report.record("future_correlation", found)


def _validation_result(cfg: Config, data: ValidationData, splits: list[Split], results: list[_TaskResult],
                       oos: _OutOfSample, market: Market, score: Callable[..., StrategyMetrics], periods: float,
                       report: leakage.LeakageReport, candidate: str, seeds: Sequence[str]) -> ValidationResult:
    """Every predictor scored on the out-of-sample series after execution costs, before any statistics."""
    fills = {p: market.execute(pr.position, oos.index) for p, pr in oos.predictions.items()}  # once per predictor
    overall = {p: score(pr, oos.index, fills[p]) for p, pr in oos.predictions.items()}
    return ValidationResult(
        dataset=data.name,
        scheme=cfg.validate.scheme,
        settings=_settings(cfg.validate, cfg.data.cost_bps, periods),
        candidate=candidate,
        splits=[_split_info(data, s) for s in splits],
        per_split={r.name: [m for _, m in r.scored] for r in results},
        overall=overall,
        oos_time=data.t[oos.index],
        net_returns={p: f.net for p, f in fills.items()},
        leakage=report,
        path_sharpes=oos.path_sharpes,
        notes=oos.notes,
        positions={p: pr.position for p, pr in oos.predictions.items()},
        seeds=[candidate, *seeds] if seeds else [],
    )


def _settings(vcfg: ValidateConfig, round_trip_bps: float, periods: float) -> dict[str, Any]:
    keys = ["train_bars", "test_bars", "step_bars", "purge_bars", "embargo_bars", "anchored", "continue_from_previous"]
    if vcfg.scheme == "cpcv":
        keys = ["cpcv_groups", "cpcv_test_groups", "purge_bars", "embargo_bars"]
    settings: dict[str, Any] = {k: getattr(vcfg, k) for k in keys}
    ex = vcfg.execution
    settings["fill"] = ex.fill if not ex.delay_bars else f"{ex.fill} after {ex.delay_bars} bars"
    settings["fee_bps_per_side"] = default_fee_bps(ex, round_trip_bps)
    settings["half_spread"] = f"{ex.half_spread_bps} bps" if ex.spread == "fixed" else f"high/low, {ex.spread_window} bars"
    if ex.impact_coef > 0:
        settings["impact"] = f"{ex.impact_coef} * sigma * sqrt(order / volume), order {ex.order_size}"
    if ex.participation_cap is not None:
        settings["participation_cap"] = ex.participation_cap
    settings["periods_per_year"] = round(periods, 1)
    settings["bootstrap_reps"] = vcfg.bootstrap_reps
    return settings


def _earlier_trials(result: ValidationResult, earlier: Sequence[Trial], market: Market,
                    oos_idx: np.ndarray) -> list[tuple[Trial, np.ndarray | None]]:
    """The earlier runs' strategies that are none of this run's, each with its net returns under this run's
    execution when it was tested on the same samples (None otherwise)."""
    mine = {t.key for t in result.trials()}
    samples = result.samples_hash
    out = []
    for t in earlier:
        if t.key in mine:
            continue
        same = t.samples == samples and len(t.positions) == len(oos_idx)
        out.append((t, market.execute(t.positions, oos_idx).net if same else None))
    return out


def _add_statistics(result: ValidationResult, vcfg: ValidateConfig, comparisons: Sequence[tuple[str, str]],
                    earlier: list[tuple[Trial, np.ndarray | None]]) -> None:
    """SPA/Reality Check of the candidate against every other predictor, DSR of all over every trial (this
    run's and the ledger's), PBO over the trials on these samples, and the comparisons."""
    net = result.net_returns
    block = vcfg.bootstrap_block or None

    def spa(a: str, b: str) -> SPAResult:
        return spa_test(net[a], net[b], reps=vcfg.bootstrap_reps, block_size=block, seed=vcfg.seed)

    for a, b in comparisons:
        missing = [p for p in (a, b) if p not in net]
        if missing:
            result.notes.append(f"comparison {a} vs {b} skipped: no predictor named {', '.join(missing)}.")
            continue
        result.comparisons.append(Comparison(a=a, b=b, spa=spa(a, b)))
    if result.has_candidate:
        partners = {b for _, b in comparisons} | set(result.seeds)
        for b in net:
            if b != result.candidate and b not in partners:
                result.spa[b] = spa(result.candidate, b)
    sharpes = [sharpe_ratio(r, 1.0) for r in net.values()]  # per sample, as the DSR reads them
    sharpes += [sharpe_ratio(r, 1.0) if r is not None else t.sharpe for t, r in earlier]
    result.earlier_trials = len(earlier)
    for p, r in net.items():
        if r.std(ddof=1) > 0:
            result.dsr[p] = deflated_sharpe_ratio(r, np.array(sharpes), vcfg.extra_trials)
    matrix = dict(net)
    matrix.update({f"{t.predictor} (ledger {j})": r for j, (t, r) in enumerate(earlier) if r is not None})
    if len(matrix) < 2:
        result.notes.append("PBO skipped: it needs at least two strategies on the same samples.")
    elif len(result.oos_time) < 2 * vcfg.pbo_blocks:
        result.notes.append(f"PBO skipped: {len(result.oos_time)} out-of-sample samples are too few for "
                            f"{vcfg.pbo_blocks} blocks.")
    else:
        result.pbo = probability_of_backtest_overfitting(np.column_stack(list(matrix.values())), list(matrix),
                                                         n_blocks=vcfg.pbo_blocks)


# ---------------------------------------------------------------- the command


DataLoader = Callable[[Config], ValidationData]
# Given the config, the data and whether to add the regime-only variant: the HRM's predictor factories.
HRMFactories = Callable[[Config, ValidationData, bool], list[PredictorFactory]]
