"""InputPipeline: bars -> model inputs exactly as training made them, and the model's heads -> a decision.

Training fits one (`fit`; validation fits one per split) and saves it beside every checkpoint; export copies
it into the bundle; export parity, the runtime host, replay and the Python API load it (`load`) from either.
The steps:

    bars --window--> SampleBars --key--> retrieval key --sample--> Sample --graph_inputs--> graph inputs
    (+ context: the pattern library as of the sample's time)          heads --decide--> Decision

The runtime runs them one at a time (the key, the tokens, then retrieval with that key); training and parity
run `dataset_inputs` over a whole history at once, which equals the per-request steps sample by sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
import numpy as np

from dualhrq.config import Config, ModelConfig, PatternsConfig
from dualhrq.data.bars import Bars
from dualhrq.data.resample import parse_rule
from dualhrq.data.windows import Sample, SampleBars, SampleBuilder, WindowDataset
from dualhrq.errors import ConfigurationError
from dualhrq.features import FeatureStats, PositionRule
from dualhrq.inputs.artifacts import PATTERNS_DIR, Artifacts, TargetScale
from dualhrq.inputs.stream import StreamWindow
from dualhrq.model.decision import Decision, DecisionRule, softmax
from dualhrq.model.vocab import ACTIONS, HOLD, InstrumentVocab, timeframe_id
from dualhrq.patterns.artifacts import load_artifacts, save_artifacts
from dualhrq.patterns.build import build_library
from dualhrq.patterns.context import pattern_context
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.regimes import RegimeModel


@dataclass(frozen=True)
class InputPipeline:
    model: ModelConfig
    artifacts: Artifacts
    library: PatternLibrary
    encoder: PatternEncoder
    regimes: RegimeModel
    position: PositionRule  # the training run's label rule: its state columns are model inputs
    stats: FeatureStats
    builder: SampleBuilder
    instruments: InstrumentVocab

    @classmethod
    def of(cls, config: Config, artifacts: Artifacts, library: PatternLibrary, encoder: PatternEncoder,
           regimes: RegimeModel) -> InputPipeline:
        """``config``: the training run's (its model and data sections define the inputs)."""
        stats = artifacts.stats()
        position = PositionRule.from_config(config.data)
        builder = SampleBuilder(stats, config.model, position, artifacts.pattern_window)
        return cls(config.model, artifacts, library, encoder, regimes, position, stats, builder,
                   InstrumentVocab(artifacts.instruments))

    @classmethod
    def fit(cls, cfg: Config, windows: WindowDataset, library_until: int | None = None,
            fit_spans: Sequence[tuple[int, int]] | None = None) -> InputPipeline:
        """Library, encoder and regimes from the bars closed before ``library_until`` (ns; default: the first
        data.train_fraction of the bars) or, instead, inside ``fit_spans`` (closed-open [start, end) ns, as
        `build_dataset` was given), feature statistics from the windows' own training fit, target scales from
        the training samples (``windows.train``)."""
        if len(windows.instruments) >= cfg.model.instrument_vocab:  # row 0 is the unknown instrument's
            raise ConfigurationError(f"model.instrument_vocab: {cfg.model.instrument_vocab} embedding rows hold at "
                                     f"most {cfg.model.instrument_vocab - 1} instruments, and the data has "
                                     f"{len(windows.instruments)}")
        library, encoder, regimes = build_library(cfg.model, cfg.patterns, cfg.data, cfg.train.seed, library_until,
                                                  fit_spans)
        train = windows.train
        scale = TargetScale(*(float(np.std(getattr(windows, k)[train])) or 1.0 for k in ("out_a", "out_b")))
        artifacts = Artifacts.of(windows.stats, list(windows.instruments), scale, windows.timeframe,
                                 windows.coarse_rule, cfg.patterns.window)
        return cls.of(cfg, artifacts, library, encoder, regimes)

    @classmethod
    def load(cls, directory: str | Path, config: Config, patterns: PatternsConfig | None = None) -> InputPipeline:
        """The pipeline saved in a checkpoint or bundle directory. ``config``: the training run's;
        ``patterns``: the library's tunables (default: the config's; the server passes its overlay's)."""
        d = Path(directory)
        artifacts = Artifacts.read(d)
        library, encoder, regimes = load_artifacts(d / PATTERNS_DIR, patterns or config.patterns)
        return cls.of(config, artifacts, library, encoder, regimes)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        self.artifacts.save(d)
        save_artifacts(d / PATTERNS_DIR, self.library, self.encoder, self.regimes)

    def with_rule(self, rule: DecisionRule | None) -> InputPipeline:
        return replace(self, artifacts=msgspec.structs.replace(self.artifacts, decision_rule=rule))

    @property
    def rule(self) -> DecisionRule | None:
        return self.artifacts.decision_rule

    @property
    def timeframe(self) -> str:
        """The fine bars' spacing the model was trained on, e.g. "1h"."""
        return self.artifacts.timeframe

    @property
    def coarse_rule(self) -> str:
        return self.artifacts.coarse_rule

    @property
    def needs(self) -> tuple[int, int]:
        """(coarse, fine) bars a request must carry."""
        return self.builder.needs

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return self.model.pattern_k, self.model.pattern_dim

    # ------------------------------------------------------------ one request, step by step

    def window(self, coarse: Bars, fine: Bars, *, validated: bool = False) -> SampleBars:
        """The bars the sample at the last fine bar reads (DataError for bad or too few bars)."""
        return self.builder.bars(coarse, fine, validated=validated)

    def key(self, bars: SampleBars) -> np.ndarray:
        """The retrieval key [1, F] float32 of a window (the pattern features of its last bars)."""
        return self.builder.pattern_features(bars)[None]

    def sample(self, bars: SampleBars, key: np.ndarray | None = None) -> Sample:
        return self.builder.sample(bars, None if key is None else key[0])

    def stream(self, bars: SampleBars, sample: Sample, closure_bars: float) -> StreamWindow:
        """A stream's window from a full window's bars and sample. ``closure_bars``: see SessionsConfig."""
        fine_ns = parse_rule(self.timeframe).ns
        return StreamWindow(self.builder, fine_ns, round(closure_bars * fine_ns), bars, sample)

    def graph_inputs(self, sample: Sample, instrument: str, timeframe: str) -> dict[str, np.ndarray]:
        """One sample's graph inputs but the pattern context and the carry (batch axis of 1)."""
        return self._graph_inputs(sample.h_tokens[None], sample.l_tokens[None], sample.regime_features[None],
                                  instrument, timeframe)

    def regime_only(self, n: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """The pattern inputs of the regime-only path: an all-zero context behind an all-zero mask."""
        k, p = self.pattern_shape
        return np.zeros((n, k, p), np.float32), np.zeros((n, k), np.float32)

    def context(self, pattern_features: np.ndarray, as_of: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(context [N, K, P], mask [N, K]) from the library as of each row's time, without a deadline."""
        return pattern_context(self.library, self.encoder, pattern_features, as_of, self.model.pattern_dim,
                               self.model.pattern_k)

    # ------------------------------------------------------------ a whole history

    def dataset_inputs(self, windows: WindowDataset, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The graph inputs but the carry of samples ``rows`` (default: all, as views), with the pattern context
        as of each sample's own time."""
        sel = slice(None) if rows is None else rows
        context, mask = self.context(windows.pattern_features[sel], windows.t[sel])
        ids = np.array([self.instruments.id(name) for name in windows.instruments], np.int64)
        return {**self._graph_inputs(windows.h_tokens[sel], windows.l_tokens[sel], windows.regime_features[sel],
                                     ids[windows.instrument_index[sel]], windows.timeframe),
                "pattern_context": context, "pattern_mask": mask}

    def _graph_inputs(self, h_tokens: np.ndarray, l_tokens: np.ndarray, regime: np.ndarray,
                      instrument: str | np.ndarray, timeframe: str) -> dict[str, np.ndarray]:
        """``instrument``: one name for every row, or each row's instrument id."""
        n = len(h_tokens)
        ids = (np.full(n, self.instruments.id(instrument), np.int64) if isinstance(instrument, str)
               else np.asarray(instrument, np.int64))
        return {"h_tokens": h_tokens, "l_tokens": l_tokens, "instrument_id": ids,
                "timeframe_id": np.full(n, timeframe_id(timeframe), np.int64),
                "regime_features": np.asarray(regime, np.float32)}

    # ------------------------------------------------------------ heads -> decision

    def decide(self, heads: Mapping[str, np.ndarray], state: int) -> Decision:
        """One row's heads (graph output names) as a decision: the action from the fitted decision rule in the
        sample's position state (the argmax without one); ``probs`` stay the model's own; forecasts in
        returns (the model forecasts in units of the training returns' std)."""
        logits = np.asarray(heads["policy_logits"], np.float64)
        probs = softmax(logits)
        rule = self.artifacts.decision_rule
        best = int(probs.argmax()) if rule is None else rule.choose_row(logits, state)
        regime = np.asarray(heads["regime_probs"], np.float64)
        scale = self.artifacts.target_scale
        # HOLD sends no order: its quantity is 0, with or without the gate (the quantity head sizes trades).
        quantity = 0.0 if best == HOLD else float(heads["quantity"])
        return Decision(ACTIONS[best], quantity, probs.tolist(), float(probs[best]),
                        float(heads["forecast_coarse"]) * scale.out_a, float(heads["forecast_fine"]) * scale.out_b,
                        float(heads["value"]), int(regime.argmax()), regime.tolist())
