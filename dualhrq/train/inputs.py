"""Bars -> the model's inputs and targets, for training, validation and the Python API, plus the artifacts
(fitted on the training window only) that let any later stage rebuild exactly the same inputs.

Per sample (one per fine bar, from dualhrq.data.windows): the token windows and regime features,
normalised with the training window's FeatureStats; the pattern context retrieved from a library built on the
training window, queried AS OF the sample's own time (only outcomes known by then: no look-ahead); the
instrument and timeframe ids; and the targets, with the regime label from the unsupervised regime model.

The artifacts travel in the checkpoint: JSON-able ones in ``extra`` (``to_extra``), the pattern library as
the directory ``patterns/`` beside the weights (``save_files``, dualhrq.patterns.artifacts' layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from dualhrq.config import Config, ModelConfig
from dualhrq.data.bars import Bars
from dualhrq.data.resample import resample
from dualhrq.data.sources import load_dataset
from dualhrq.data.splits import validation_slice
from dualhrq.data.windows import WindowDataset, build_dataset
from dualhrq.errors import ModelLoadError
from dualhrq.features import FeatureStats, regime_features
from dualhrq.model import ModelInputs
from dualhrq.model.decision import DecisionRule
from dualhrq.model.vocab import InstrumentVocab, timeframe_id
from dualhrq.patterns.artifacts import load_artifacts, save_artifacts
from dualhrq.patterns.build import build_library
from dualhrq.patterns.context import pattern_context
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.regimes import RegimeModel
from dualhrq.train.batches import TrainingSet
from dualhrq.train.checkpoint import read_checkpoint_meta
from dualhrq.train.losses import Targets

PATTERNS_DIR = "patterns"


@dataclass
class InputArtifacts:
    """What turns bars into model inputs the way training did, fitted on the training window only."""

    stats: FeatureStats
    regimes: RegimeModel
    encoder: PatternEncoder
    library: PatternLibrary
    instruments: InstrumentVocab
    target_scale: dict[str, float]  # training std of out_a and out_b: model forecasts are in these units
    coarse_rule: str
    pattern_window: int
    # Fitted on the validation slice after training (dualhrq.model.decision), per checkpoint: None before.
    decision_rule: DecisionRule | None = None

    def to_extra(self) -> dict[str, Any]:
        return {"feature_stats": self.stats.to_dict(), "regimes": self.regimes.to_dict(),
                "pattern_encoder": self.encoder.to_dict(), "instruments": self.instruments.names(),
                "target_scale": dict(self.target_scale), "coarse_rule": self.coarse_rule,
                "pattern_window": self.pattern_window, "pattern_library": PATTERNS_DIR}

    def save_files(self, directory: str | Path) -> None:
        save_artifacts(Path(directory) / PATTERNS_DIR, self.library, self.encoder, self.regimes)

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> InputArtifacts:
        d = Path(directory)
        meta = read_checkpoint_meta(d)
        extra = meta.extra
        try:
            library, encoder, regimes = load_artifacts(d / extra["pattern_library"], meta.config.patterns)
            return cls(FeatureStats.from_dict(extra["feature_stats"]), regimes, encoder, library,
                       InstrumentVocab(list(extra["instruments"])),
                       {k: float(v) for k, v in extra["target_scale"].items()}, str(extra["coarse_rule"]),
                       int(extra["pattern_window"]),
                       DecisionRule.from_builtins(extra["decision_rule"], str(d)) if "decision_rule" in extra else None)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"{d}: checkpoint lacks the input artifacts training writes ({e!r}); "
                                 "was it written by `dualhrq train`?") from None

    def pattern_context(self, pattern_features: np.ndarray, as_of: np.ndarray,
                        model_cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
        """(context [N, K, P], mask [N, K]) from the library as of each row's time."""
        return pattern_context(self.library, self.encoder, pattern_features, as_of, model_cfg.pattern_dim,
                               model_cfg.pattern_k)


@dataclass
class PreparedData:
    windows: WindowDataset
    artifacts: InputArtifacts
    samples: TrainingSet  # every sample, in time order (windows' indexing)
    val_fraction: float = 0.0  # the tail of the training window kept out of training for model selection

    @property
    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, validation) sample indices: the validation slice is the last ``val_fraction`` of the
        training window, and the training samples whose labels reach into it are purged."""
        w = self.windows
        return validation_slice(w.train, w.t, w.t_known, self.val_fraction)

    @property
    def train(self) -> TrainingSet:
        return self.samples.subset(self.split[0])

    @property
    def val(self) -> TrainingSet:
        return self.samples.subset(self.split[1])

    @property
    def test(self) -> TrainingSet:
        return self.samples.subset(self.windows.test)


def regime_labels(windows: WindowDataset, fine: Bars, regimes: RegimeModel) -> np.ndarray:
    """Regime id of every sample, from its RAW regime features (the regime model standardises on its own)."""
    raw = regime_features(fine, resample(fine, windows.coarse_rule))
    return regimes.predict(raw[windows.bar_index])


def window_inputs(windows: WindowDataset, artifacts: InputArtifacts, model_cfg: ModelConfig,
                  rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The model's inputs (by graph input name, without the carry) of the samples ``rows`` (default: all, as
    views), with pattern context as of each sample's own time."""
    sel = slice(None) if rows is None else rows
    context, mask = artifacts.pattern_context(windows.pattern_features[sel], windows.t[sel], model_cfg)
    n = len(context)
    return {"h_tokens": windows.h_tokens[sel], "l_tokens": windows.l_tokens[sel],
            "instrument_id": np.full(n, artifacts.instruments.id(windows.instrument), np.int64),
            "timeframe_id": np.full(n, timeframe_id(windows.timeframe), np.int64),
            "regime_features": windows.regime_features[sel], "pattern_context": context, "pattern_mask": mask}


def sample_inputs(windows: WindowDataset, artifacts: InputArtifacts, model_cfg: ModelConfig) -> ModelInputs:
    """Every sample's model inputs, as tensors sharing memory with the windows' arrays."""
    return ModelInputs(**{k: torch.from_numpy(v) for k, v in window_inputs(windows, artifacts, model_cfg).items()})


def make_targets(labels: dict[str, np.ndarray], target_scale: dict[str, float], cost_bps: float) -> Targets:
    """Targets from per-sample labels (out_a, out_b, action, quantity, regime, state). The action label and the value
    head's realised return both refer to out_b, the forward return over data.label_horizon fine bars."""
    def f32(x: np.ndarray, scale: float = 1.0) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x, np.float64) / scale).float()

    sb = target_scale["out_b"]
    n = len(labels["action"])
    return Targets(action=torch.from_numpy(np.asarray(labels["action"], np.int64)), quantity=f32(labels["quantity"]),
                   out_a=f32(labels["out_a"], target_scale["out_a"]), out_b=f32(labels["out_b"], sb),
                   action_return=f32(labels["out_b"], sb), cost=torch.full((n,), cost_bps * 1e-4 / sb),
                   regime=torch.from_numpy(np.asarray(labels["regime"], np.int64)),
                   state=torch.from_numpy(np.asarray(labels["state"], np.int64)))


def window_labels(windows: WindowDataset, regimes: np.ndarray) -> dict[str, np.ndarray]:
    return {"out_a": windows.out_a, "out_b": windows.out_b, "action": windows.action,
            "quantity": windows.quantity, "regime": regimes, "state": windows.state}


def fit_artifacts(cfg: Config, windows: WindowDataset, library_fraction: float | None = None) -> InputArtifacts:
    """Library, encoder and regimes from the first ``library_fraction`` (default data.train_fraction) of the
    bars (dualhrq.patterns.build), feature statistics from the windows' own training fit, target scales from
    the training samples."""
    data_cfg = cfg.data if library_fraction is None else msgspec.structs.replace(cfg.data,
                                                                                 train_fraction=library_fraction)
    library, encoder, regimes = build_library(cfg.data.dataset, cfg.model, cfg.patterns, data_cfg, cfg.train.seed)
    train = windows.train
    scale = {k: float(np.std(getattr(windows, k)[train])) or 1.0 for k in ("out_a", "out_b")}
    return InputArtifacts(windows.stats, regimes, encoder, library, InstrumentVocab([windows.instrument]), scale,
                          windows.coarse_rule, cfg.patterns.window)


def prepare_training(cfg: Config, artifacts: InputArtifacts | None = None,
                     library_fraction: float | None = None) -> PreparedData:
    """Every sample of ``data.dataset`` as tensors, with artifacts fitted on the training window (or given:
    a resumed run rebuilds exactly the inputs it started with)."""
    dataset = load_dataset(cfg.data.dataset)
    windows = build_dataset(dataset, cfg.model, cfg.data, artifacts.stats if artifacts else None,
                            cfg.patterns.window)
    artifacts = artifacts or fit_artifacts(cfg, windows, library_fraction)
    labels = window_labels(windows, regime_labels(windows, dataset.bars, artifacts.regimes))
    samples = TrainingSet(sample_inputs(windows, artifacts, cfg.model),
                          make_targets(labels, artifacts.target_scale, cfg.data.cost_bps))
    return PreparedData(windows, artifacts, samples, cfg.train.val_fraction)
