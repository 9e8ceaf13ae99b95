"""Tokenisation: bars -> model inputs. `build_sample` makes one from the most recent bars (what the runtime
does per request, through `SampleBuilder`'s steps); `build_dataset` makes all of them over a history at once
(what training uses), of one instrument or of several side by side.

Both read the same feature matrices (`dualhrq.features`) and normalise them with the same statistics;
since each feature row depends on a fixed number of bars ending at it, sample i of `build_dataset` equals
`build_sample` on the bars known at sample i. A test holds them to that.

At fine bar i (time t[i]) a sample holds:
- h_tokens: the features of the last coarse_len coarse bars CLOSED by t[i], oldest first;
- l_tokens: the features of fine bars i-fine_len+1 .. i;
- regime_features: the 20 REGIME_FEATURES of row i; pattern_features: pattern_features row i.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dualhrq.config import DataConfig, ModelConfig, PatternsConfig
from dualhrq.data.bars import Bars, Dataset
from dualhrq.data.labels import Labels, make_labels
from dualhrq.data.resample import default_coarse_rule, parse_rule, resample, visible_counts
from dualhrq.data.splits import purge
from dualhrq.errors import ConfigurationError, DataError
from dualhrq.features import (
    BAR_FEATURES,
    BAR_WARMUP,
    FINE_FEATURES,
    REGIME_COARSE_WARMUP,
    REGIME_FEATURES,
    REGIME_WARMUP,
    FeatureStats,
    PositionRule,
    bar_features,
    fine_features,
    pattern_features,
    regime_features,
    state_of,
)
from dualhrq.features.newest import newest_rows

DEFAULT_PATTERN_WINDOW = PatternsConfig().window


def _check_widths(model_cfg: ModelConfig) -> None:
    for key, width in (("coarse_features", len(BAR_FEATURES)), ("fine_features", len(FINE_FEATURES)),
                       ("regime_features", len(REGIME_FEATURES))):
        if getattr(model_cfg, key) != width:
            raise ConfigurationError(f"model.{key}: is {getattr(model_cfg, key)}, but dualhrq.data computes "
                                     f"{width} features per row")


def needs(model_cfg: ModelConfig, pattern_window: int, position: PositionRule) -> tuple[int, int]:
    """(coarse bars, fine bars) a request must carry: the token windows plus the features' warm-up."""
    coarse = max(model_cfg.coarse_len + BAR_WARMUP, REGIME_COARSE_WARMUP)
    fine = max(model_cfg.fine_len + max(BAR_WARMUP, position.warmup), REGIME_WARMUP + 1, pattern_window + 1)
    return coarse, fine


@dataclass(frozen=True)
class Sample:
    """One model input, built from the bars known at ``as_of``."""

    h_tokens: np.ndarray  # float32 [T_h, coarse_features]
    l_tokens: np.ndarray  # float32 [T_l, fine_features]
    regime_features: np.ndarray  # float32 [20]
    pattern_features: np.ndarray  # float32 [pattern_window + 5], not normalised (scale-free already)
    as_of: int  # ns: the last fine bar's close time
    state: int  # the label rule's position state at the last fine bar (FLAT, LONG, SHORT)


class IncompleteFeatures(DataError):
    """Features that came out non-finite from enough validated bars (``part``: coarse, fine, regime or pattern).
    needs() guarantees the history, so either the bars hold numbers at the edge of float64 (prices of a few
    subnormals, whose ratios are 0/0), or it is a bug."""

    def __init__(self, part: str) -> None:
        super().__init__(f"{part}: incomplete features (not finite) despite enough bars: prices or volumes too "
                         "small or too large to compute with?")
        self.part = part


def check_complete(name: str, x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise IncompleteFeatures(name)


@dataclass(frozen=True)
class SampleBars:
    """The bars one sample is built from: the last needs() of each series, the coarse ones closed by as_of."""

    coarse: Bars
    fine: Bars
    as_of: int  # ns: the last fine bar's close time


@dataclass(frozen=True)
class SampleBuilder:
    """`build_sample` for one model, also in steps: `bars` (check and trim), `pattern_features` (the
    retrieval key) and `sample` (the rest). The runtime starts the pattern lookup between the second and the
    third, so the index searches while the tokens are built. Only the rows a sample holds are computed."""

    stats: FeatureStats
    model: ModelConfig
    position: PositionRule
    pattern_window: int = DEFAULT_PATTERN_WINDOW

    def __post_init__(self) -> None:
        _check_widths(self.model)

    @property
    def needs(self) -> tuple[int, int]:
        return needs(self.model, self.pattern_window, self.position)

    def bars(self, coarse: Bars, fine: Bars, *, validated: bool = False) -> SampleBars:
        """The bars the sample at the last fine bar reads. Coarse bars not closed by then (t > the last fine
        t, e.g. a period still forming) are ignored. Raises BarsError/DataError for bad or too few bars;
        ``validated``: the caller has already run both series through Bars.validate (the runtime does, while
        decoding, to name the wire field), so it is not run twice."""
        if not validated:
            fine.validate("fine")
            coarse.validate("coarse")
        if len(fine) == 0:
            raise DataError("fine: no bars")
        as_of = int(fine.t[-1])
        coarse = coarse.until(as_of)
        n_coarse, n_fine = self.needs
        if len(fine) < n_fine:
            raise DataError(f"fine: {len(fine)} bars, need at least {n_fine}")
        if len(coarse) < n_coarse:
            raise DataError(f"coarse: {len(coarse)} bars closed by the last fine bar, need at least {n_coarse}")
        return SampleBars(coarse.slice(len(coarse) - n_coarse), fine.slice(len(fine) - n_fine), as_of)

    def pattern_features(self, bars: SampleBars) -> np.ndarray:
        """float32 [pattern_window + 5]: the pattern features of the last fine bar (the retrieval key)."""
        pattern = pattern_features(bars.fine, self.pattern_window, last=1)[0].astype(np.float32)
        check_complete("pattern", pattern)
        return pattern

    def sample(self, bars: SampleBars, pattern: np.ndarray | None = None) -> Sample:
        """The model input; ``pattern``: `pattern_features` of the same bars when already computed."""
        m = self.model
        h = self.coarse_tokens(bars.coarse, m.coarse_len)
        l, state = self.fine_tokens(bars.fine, m.fine_len)  # noqa: E741
        return self.assemble(bars, h, l, state, pattern)

    def coarse_tokens(self, coarse: Bars, last: int) -> np.ndarray:
        """float32 [last, coarse_features]: the normalised tokens of the last ``last`` coarse bars."""
        return self.stats.coarse.apply(bar_features(coarse, last=last))

    def fine_tokens(self, fine: Bars, last: int) -> tuple[np.ndarray, int]:
        """(float32 [last, fine_features], the position state at the last bar): the normalised tokens of the
        last ``last`` fine bars."""
        raw = fine_features(fine, self.position, last=last)
        return self.stats.fine.apply(raw), state_of(raw[-1, len(BAR_FEATURES):])

    def newest(self, bars: SampleBars, k: int) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """(`fine_tokens` of the last ``k`` fine bars, their state, the sample's normalised regime row and its
        pattern features) in one compiled call: a stream's append, whose h tokens and older l tokens are
        already computed. DataError, as `assemble`, when one of them is incomplete."""
        tokens, state, regime, pattern, incomplete = newest_rows(bars.fine, bars.coarse, k, self.position,
                                                                 self.stats, self.pattern_window)
        if incomplete is not None:
            raise IncompleteFeatures(incomplete)
        return tokens, state, regime, pattern

    def assemble(self, bars: SampleBars, h_tokens: np.ndarray, l_tokens: np.ndarray, state: int,
                 pattern: np.ndarray | None = None) -> Sample:
        """The sample at ``bars``' last fine bar from its tokens (computed at once or a stream's, bar by bar)."""
        regime = self.stats.regime.apply(regime_features(bars.fine, bars.coarse, last=1)[0])
        for name, x in (("coarse", h_tokens), ("fine", l_tokens), ("regime", regime)):
            check_complete(name, x)
        return Sample(h_tokens, l_tokens, regime, self.pattern_features(bars) if pattern is None else pattern,
                      bars.as_of, state)

    def __call__(self, coarse: Bars, fine: Bars) -> Sample:
        return self.sample(self.bars(coarse, fine))


def build_sample(coarse: Bars, fine: Bars, stats: FeatureStats, model_cfg: ModelConfig, position: PositionRule,
                 pattern_window: int = DEFAULT_PATTERN_WINDOW) -> Sample:
    """The model input at the last fine bar. Coarse bars not closed by then (t > the last fine t, e.g. a
    period still forming) are ignored. Raises BarsError/DataError for bad or too few bars."""
    return SampleBuilder(stats, model_cfg, position, pattern_window)(coarse, fine)


@dataclass(frozen=True)
class WindowDataset:
    """Every sample of a history (one instrument's, or several's) as stacked arrays, with labels, times and
    the train/test split. Samples are in time order; at one time, in ``instruments`` order."""

    instruments: tuple[str, ...]  # one per dataset, in data.dataset order
    timeframe: str
    coarse_rule: str
    h_tokens: np.ndarray  # float32 [N, T_h, coarse_features]
    l_tokens: np.ndarray  # float32 [N, T_l, fine_features]
    regime_features: np.ndarray  # float32 [N, 20]
    pattern_features: np.ndarray  # float32 [N, pattern_window + 5]
    out_a: np.ndarray  # float32 [N] next coarse-period return
    out_b: np.ndarray  # float32 [N] next fine-bar return
    action: np.ndarray  # int64 [N] index into ACTIONS
    quantity: np.ndarray  # float32 [N] in [0, 1)
    state: np.ndarray  # int64 [N] the label rule's position state at the sample (= Sample.state)
    t: np.ndarray  # int64 [N] sample time (= Sample.as_of)
    t_known: np.ndarray  # int64 [N] when all of the sample's labels are known
    bar_index: np.ndarray  # int64 [N] the fine bar each sample ends at, in its own instrument's bars
    instrument_index: np.ndarray  # int64 [N] the sample's instrument, an index into ``instruments``
    train: np.ndarray  # int64 sample indices, purged of labels that reach into the test part
    test: np.ndarray  # int64 sample indices: the held-out tail
    stats: FeatureStats  # fitted on the bars before the test part (or given)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def instrument(self) -> str:
        """The instruments as one name, for messages: "EURUSD", or "GOOG+SP500+NASDAQ"."""
        return "+".join(self.instruments)

    def of_instrument(self, i: int) -> np.ndarray:
        """int64 indices of instrument ``i``'s samples, in time order."""
        return np.flatnonzero(self.instrument_index == i)

    @functools.cached_property
    def samples_fingerprint(self) -> str:
        """Identifies every sample's time, label time, fine-bar return and instrument: hashed once, however
        many readers ask (the dataset is immutable)."""
        h = hashlib.sha256()
        for a in (self.t, self.t_known, self.out_b, self.instrument_index):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class _Series:
    """One dataset's raw feature matrices, labels and complete samples, before the split and normalisation."""

    name: str  # the dataset's
    instrument: str
    coarse: Bars
    fine: Bars
    coarse_x: np.ndarray
    fine_x: np.ndarray
    regime_x: np.ndarray
    pattern_x: np.ndarray
    labels: Labels
    idx: np.ndarray  # the fine bars with a complete sample
    k: np.ndarray  # coarse bars closed by each fine bar

    @property
    def t(self) -> np.ndarray:
        return self.fine.t[self.idx]

    def default_cut(self, train_fraction: float) -> int:
        """The first test sample's time by ``train_fraction`` of this series' samples."""
        n = len(self.idx)  # at least 2 (_series)
        n_test = round(n * (1 - train_fraction))
        if n_test < 1 or n_test >= n:
            raise DataError(f"{self.name}: {n} complete samples ({len(self.fine)} bars); too few to split into "
                            f"train and test at data.train_fraction {train_fraction}")
        return int(self.t[n - n_test])


def _normalised_rows(fine: Bars, rule: str, position: PositionRule) -> tuple[Bars, np.ndarray, np.ndarray, np.ndarray]:
    """(coarse bars, coarse, fine and regime feature rows) of ``fine``: the rows the statistics normalise, from
    these bars and coarse bars resampled from them alone."""
    coarse = resample(fine, rule)
    return coarse, bar_features(coarse), fine_features(fine, position), regime_features(fine, coarse)


def _series(dataset: Dataset, model_cfg: ModelConfig, data_cfg: DataConfig, rule: str,
            pattern_window: int) -> _Series:
    fine = dataset.bars
    position = PositionRule.from_config(data_cfg)
    coarse, coarse_x, fine_x, regime_x = _normalised_rows(fine, rule, position)
    labels = make_labels(fine, parse_rule(rule).ns, data_cfg)
    n_coarse, n_fine = needs(model_cfg, pattern_window, position)
    k = visible_counts(coarse.t, fine.t)
    idx = np.flatnonzero((np.arange(len(fine)) >= n_fine - 1) & (k >= n_coarse) & labels.valid)
    if len(idx) < 2:
        raise DataError(f"{dataset.name}: {len(idx)} complete samples ({len(fine)} bars, of which {n_fine} fine and "
                        f"{n_coarse} coarse bars of history per sample); too few to split into train and test")
    return _Series(dataset.name, data_cfg.instrument or dataset.instrument, coarse, fine, coarse_x, fine_x, regime_x,
                   pattern_features(fine, pattern_window), labels, idx, k)


def _span_stats(series: Sequence[_Series], fit_spans: Sequence[tuple[int, int]], rule: str,
                position: PositionRule) -> FeatureStats:
    """Statistics of the feature rows of the bars inside ``fit_spans``, each span's computed from its own bars:
    a row's look-back (and a coarse bar) then never reaches across a span's edge into the bars left out."""
    rows: list[list[np.ndarray]] = [[], [], []]
    for s in series:
        for start, end in fit_spans:
            first, stop = np.searchsorted(s.fine.t, (start, end), side="left")
            if stop > first:
                for group, x in zip(rows, _normalised_rows(s.fine.slice(int(first), int(stop)), rule, position)[1:]):
                    group.append(x)
    return FeatureStats.fit(*(np.concatenate(group) for group in rows))


def build_dataset(datasets: Dataset | Sequence[Dataset], model_cfg: ModelConfig, data_cfg: DataConfig,
                  stats: FeatureStats | None = None, pattern_window: int = DEFAULT_PATTERN_WINDOW,
                  test_from: int | None = None, fit_spans: Sequence[tuple[int, int]] | None = None) -> WindowDataset:
    """All samples with complete inputs and labels, vectorised, of one dataset or of several (one instrument
    each, one fine timeframe). The held-out tail starts at ``test_from`` (ns), by default at the earliest of
    each dataset's own ``data.train_fraction`` cut: one time for all, so that no instrument trains on a time
    another is tested on (an instrument may then lack either part, as a validation split's cut does).
    Without ``stats``, statistics are fitted on the bars closed before that time, of every dataset together.

    ``fit_spans`` (closed-open [start, end) ns of bar time, instead of ``test_from``; CPCV validation, whose
    training groups lie on both sides of its test groups): statistics come from the bars inside the spans,
    each span's feature rows computed from its own bars; ``train`` holds the samples whose label interval
    [t, t_known] lies inside one span, ``test`` the rest."""
    _check_widths(model_cfg)
    if fit_spans is not None and test_from is not None:
        raise DataError("build_dataset: give test_from (one cut) or fit_spans (time spans), not both")
    datasets = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    rule = data_cfg.coarse_rule or default_coarse_rule(datasets[0].timeframe)
    series = [_series(d, model_cfg, data_cfg, rule, pattern_window) for d in datasets]
    if fit_spans is None:
        cut = min(s.default_cut(data_cfg.train_fraction) for s in series) if test_from is None else int(test_from)
    if stats is None and fit_spans is not None:
        stats = _span_stats(series, fit_spans, rule, PositionRule.from_config(data_cfg))
    elif stats is None:  # features of the bars known before the first test sample, of every series together
        coarse_rows = np.concatenate([s.coarse_x[s.coarse.t < cut] for s in series])
        fine_rows = np.concatenate([s.fine_x[s.fine.t < cut] for s in series])
        regime_rows = np.concatenate([s.regime_x[s.fine.t < cut] for s in series])
        stats = FeatureStats.fit(coarse_rows, fine_rows, regime_rows)
    t_h, t_l = model_cfg.coarse_len, model_cfg.fine_len
    parts = []
    for s in series:
        idx, k = s.idx, s.k
        parts.append({
            "h_tokens": stats.coarse.apply(s.coarse_x)[k[idx, None] - t_h + np.arange(t_h)],
            "l_tokens": stats.fine.apply(s.fine_x)[idx[:, None] - t_l + 1 + np.arange(t_l)],
            "regime_features": stats.regime.apply(s.regime_x[idx]),
            "pattern_features": s.pattern_x[idx].astype(np.float32),
            "out_a": s.labels.out_a[idx].astype(np.float32), "out_b": s.labels.out_b[idx].astype(np.float32),
            "action": s.labels.action[idx], "quantity": s.labels.quantity[idx].astype(np.float32),
            "state": s.labels.state[idx], "t": s.t, "t_known": s.labels.t_known[idx], "bar_index": idx})
    instrument = np.concatenate([np.full(len(s.idx), i, np.int64) for i, s in enumerate(series)])
    if len(series) == 1:  # in time order already: no copy of the token arrays
        columns = parts[0]
    else:
        order = np.lexsort((instrument, np.concatenate([p["t"] for p in parts])))  # time, then list order
        columns = {key: np.concatenate([p[key] for p in parts])[order] for key in parts[0]}
        instrument = instrument[order]
    t, t_known = columns["t"], columns["t_known"]
    if fit_spans is not None:
        inside = np.zeros(len(t), dtype=bool)
        for start, end in fit_spans:
            inside |= (t >= start) & (t_known < end)
        train, test = np.flatnonzero(inside), np.flatnonzero(~inside)
    else:
        test = np.flatnonzero(t >= cut)
        if test_from is None:  # the default cut leaves every instrument both parts, or says which lacks one
            for i, s in enumerate(series):
                for part, rows in (("test", t[instrument == i] >= cut), ("training", t[instrument == i] < cut)):
                    if not rows.any():
                        raise DataError(f"{s.name}: no {part} samples: its bars end before, or start after, "
                                        f"{_day(cut)}, where the held-out tail of every dataset of the list starts")
        train = purge(np.flatnonzero(t < cut), test, t, t_known, purge_bars=0, embargo_bars=0)
    return WindowDataset(instruments=tuple(s.instrument for s in series), timeframe=datasets[0].timeframe,
                         coarse_rule=rule, **columns, instrument_index=instrument, train=train, test=test, stats=stats)


def _day(ns: int) -> str:
    return np.datetime64(int(ns), "ns").astype("datetime64[m]").astype(str)
