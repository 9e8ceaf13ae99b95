"""Bars -> the model's inputs and targets as tensors, for training and validation.

Per sample (one per fine bar, from dualhrq.data.windows): the graph inputs from the run's InputPipeline
(token windows and regime features normalised with the training window's statistics; the pattern context
from a library built on the training window, queried AS OF the sample's own time, so only outcomes known by
then: no look-ahead); and the targets, with the regime label from the pipeline's unsupervised regime model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dualhrq.config import Config
from dualhrq.data.bars import Bars
from dualhrq.data.resample import resample
from dualhrq.data.sources import load_datasets
from dualhrq.data.splits import validation_slice
from dualhrq.data.windows import WindowDataset, build_dataset
from dualhrq.features import regime_features
from dualhrq.inputs import InputPipeline
from dualhrq.inputs.artifacts import TargetScale
from dualhrq.model import ModelInputs
from dualhrq.patterns.regimes import RegimeModel
from dualhrq.train.batches import TrainingSet
from dualhrq.train.losses import Targets


@dataclass
class PreparedData:
    windows: WindowDataset
    inputs: InputPipeline
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


def regime_labels(windows: WindowDataset, fines: Sequence[Bars], regimes: RegimeModel) -> np.ndarray:
    """Regime id of every sample, from its RAW regime features (the regime model standardises on its own);
    ``fines``: each instrument's bars, in ``windows.instruments`` order."""
    out = np.zeros(len(windows), np.int64)
    for i, fine in enumerate(fines):
        rows = windows.of_instrument(i)
        raw = regime_features(fine, resample(fine, windows.coarse_rule))
        out[rows] = regimes.predict(raw[windows.bar_index[rows]])
    return out


def make_targets(labels: dict[str, np.ndarray], target_scale: TargetScale, cost_bps: float) -> Targets:
    """Targets from per-sample labels (out_a, out_b, action, quantity, regime, state). The action label and the value
    head's realised return both refer to out_b, the forward return over data.label_horizon fine bars."""
    def f32(x: np.ndarray, scale: float = 1.0) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x, np.float64) / scale).float()

    sb = target_scale.out_b
    n = len(labels["action"])
    return Targets(action=torch.from_numpy(np.asarray(labels["action"], np.int64)), quantity=f32(labels["quantity"]),
                   out_a=f32(labels["out_a"], target_scale.out_a), out_b=f32(labels["out_b"], sb),
                   action_return=f32(labels["out_b"], sb), cost=torch.full((n,), cost_bps * 1e-4 / sb),
                   regime=torch.from_numpy(np.asarray(labels["regime"], np.int64)),
                   state=torch.from_numpy(np.asarray(labels["state"], np.int64)))


def window_labels(windows: WindowDataset, regimes: np.ndarray) -> dict[str, np.ndarray]:
    return {"out_a": windows.out_a, "out_b": windows.out_b, "action": windows.action,
            "quantity": windows.quantity, "regime": regimes, "state": windows.state}


def prepare_training(cfg: Config, inputs: InputPipeline | None = None, test_from: int | None = None,
                     fit_spans: Sequence[tuple[int, int]] | None = None) -> PreparedData:
    """Every sample of ``data.dataset`` (one or a list) as tensors, with an InputPipeline fitted on the
    training window (or given: a resumed run rebuilds exactly the inputs it started with). ``test_from``: where
    the held-out tail starts (ns; default: by data.train_fraction), and the library's cut with it;
    ``fit_spans`` instead: the closed-open [start, end) ns spans of bars the whole pipeline is fitted on
    (`build_dataset`, `InputPipeline.fit`)."""
    datasets = load_datasets(cfg.data)
    windows = build_dataset(datasets, cfg.model, cfg.data, inputs.stats if inputs else None, cfg.patterns.window,
                            test_from, fit_spans)
    inputs = inputs or InputPipeline.fit(cfg, windows, test_from, fit_spans)
    labels = window_labels(windows, regime_labels(windows, [d.bars for d in datasets], inputs.regimes))
    model_inputs = ModelInputs(**{k: torch.from_numpy(v) for k, v in inputs.dataset_inputs(windows).items()})
    samples = TrainingSet(model_inputs, make_targets(labels, inputs.artifacts.target_scale, cfg.data.cost_bps))
    return PreparedData(windows, inputs, samples, cfg.train.val_fraction)
