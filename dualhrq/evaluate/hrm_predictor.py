"""The HRM as a validation Predictor (dualhrq.evaluate.validate): walk-forward or CPCV with the model, with and
without its pattern context.

Each split refits everything the inputs depend on: feature statistics, target scales, regime model, pattern
encoder and library (with its realised outcomes). Under walk-forward they come from the bars before a cut
right after the split's last training sample, and every test window lies after that cut. Under CPCV training
groups also follow test groups, which no one cut excludes: the fit reads only the bars inside the time spans
between the left-out samples' label hulls (`fit_spans`), each span on its own, so a test group's bars never
inform a statistic, a regime or a library entry (whose window and outcome lie inside one span). Either way no
test window informs its own normalisation or retrieval. The model then trains for
``train.steps`` steps (from the previous split's weights when validation continues), keeps the checkpoint
with the best cross-entropy on the purged tail of the split's training window, and predicts with the ACT
loop as served.

The two variants share training: ``hrm`` and ``hrm_regime_only`` (the same model with an all-zero pattern
mask, the runtime's fail-open path) key their checkpoints by the training samples and the starting state,
so the second finds the first's checkpoint and only predicts. Their difference on the same splits is the
price of failing open.

Positions: the action labels mark a coming move beyond the cost upwards with BUY (from flat) or CLOSE_SHORT
(from short), downwards with SELL or CLOSE_LONG, and HOLD otherwise. The position is the policy's probability
of an up-move minus that of a down-move, in [-1, 1] (the logistic baseline's 2P - 1). Replaying the argmax
action instead would mostly hold: HOLD is the majority label, so a calibrated policy rarely ranks it second.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dualhrq.config import Config, prediction_settings
from dualhrq.data.splits import label_hulls, overlaps, validation_slice
from dualhrq.data.windows import WindowDataset
from dualhrq.errors import ConfigurationError, DataError, InferenceError
from dualhrq.evaluate.metrics import Predictions
from dualhrq.evaluate.validate import PanelRows, PredictorFactory, ValidationData
from dualhrq.model import HRM
from dualhrq.model.vocab import position_from_probs
from dualhrq.train.act import act_inference
from dualhrq.train.batches import TrainingSet, index_inputs, inputs_to
from dualhrq.train.checkpoint import load_checkpoint, read_checkpoint_meta
from dualhrq.train.distributed import DistContext, resolve_device
from dualhrq.train.inputs import PreparedData, make_targets, prepare_training
from dualhrq.train.loop import (
    EvalSets,
    best_checkpoint,
    finished_at,
    latest_checkpoint,
    new_trainer,
    resume_trainer,
    run,
)

log = logging.getLogger(__name__)

_PREDICT_BATCH = 512


def position_from_policy(policy_logits: torch.Tensor) -> torch.Tensor:
    """[B] P(up-move) - P(down-move) in [-1, 1] from policy logits [B, 5] (see the module docstring)."""
    return position_from_probs(torch.softmax(policy_logits, dim=-1))


class HRMPredictor:
    """Fits the HRM on a split's training samples and predicts its test samples (validate's Predictor).

    Over one dataset the split's samples are the model's; over several (``data.inputs`` a `PanelRows`) the
    model also trains on the other instruments' samples of the same span whose labels are known by the time
    the split's own are, so no other instrument carries the test window's information either."""

    def __init__(self, cfg: Config, data: ValidationData, model_dir: Path, name: str = "hrm",
                 patterns: bool = True) -> None:
        panel = data.inputs if isinstance(data.inputs, PanelRows) else PanelRows(data.inputs, 0)
        self.panel = panel
        if not isinstance(panel.windows, WindowDataset):
            raise DataError("validation data: the HRM predictor needs the window dataset as `inputs` "
                            "(dualhrq.evaluate.validate.validation_data provides it)")
        self.cfg, self.data, self.model_dir, self.name, self.patterns = cfg, data, model_dir, name, patterns
        self.windows: WindowDataset = panel.windows
        self.rows = panel.rows  # data's sample i is the windows' sample rows[i]
        if not np.array_equal(self.windows.t[self.rows], data.t):
            raise DataError(f"{name}: the HRM's samples differ from the validation samples "
                            f"({len(self.rows)} vs {len(data.t)}); build both from one config")
        self.ctx = DistContext(0, 1, resolve_device(cfg.train.device))
        self.model: HRM | None = None
        self.prepared: PreparedData | None = None

    def fit(self, train_idx: np.ndarray, resume_from: object | None) -> str:
        """Train (or find the twin variant's identical run) and return the checkpoint path as the state."""
        train_idx = np.asarray(train_idx, np.int64)
        self.prepared = self._prepare(train_idx)
        rows = self._training_rows(train_idx)
        # Same data, config, split and starting point: the same run (the regime-only twin finds the first
        # variant's model); anything else changed trains afresh instead of reusing a stale model.
        setup = (json.dumps(prediction_settings(self.cfg), sort_keys=True) + self.data.fingerprint()
                 # the other instruments' samples and labels, so that a changed file among them retrains too
                 + self.windows.samples_fingerprint
                 # the scheme decides what the inputs are fitted on (one cut, or CPCV's spans), not only the rows
                 + self.cfg.validate.scheme
                 + str(resume_from))
        key = hashlib.sha256(rows.tobytes() + setup.encode()).hexdigest()[:16]
        run_dir = self.model_dir / key
        steps = self.cfg.train.steps
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None and (finished_at(run_dir) is not None or read_checkpoint_meta(ckpt).step >= steps):
            log.info("%s: this split's model is trained already (%s)", self.name, ckpt)
        else:
            fit_rows, val_rows = validation_slice(rows, self.windows.t, self.windows.t_known,
                                                  self.cfg.train.val_fraction)
            data, val = self._training_set(fit_rows), self._training_set(val_rows)
            if ckpt is not None:  # an interrupted run of this very split: finish it
                trainer = resume_trainer(ckpt, data, self.ctx)
            else:
                start = load_checkpoint(str(resume_from))[0] if resume_from else None
                trainer = new_trainer(self.cfg, data, self.ctx, steps, model=start)
            # As `dualhrq train` does: the checkpoint with the best CE on the purged tail of the split's own
            # training window is the split's model (its test window is never looked at).
            run(trainer, steps, run_dir, inputs=self.prepared.inputs,
                eval_sets=EvalSets.of(data, val, None) if len(val) else None, progress=False)
        ckpt = best_checkpoint(run_dir)
        self.model = load_checkpoint(ckpt, self.ctx.device)[0]
        return str(ckpt)

    def predict(self, test_idx: np.ndarray) -> Predictions:
        if self.model is None or self.prepared is None:
            raise InferenceError(f"{self.name}: predict called before fit")
        rows = self.rows[np.asarray(test_idx, np.int64)]
        inputs = index_inputs(self.prepared.samples.inputs, torch.as_tensor(rows))
        if not self.patterns:
            inputs = replace(inputs, pattern_mask=torch.zeros_like(inputs.pattern_mask))
        position, forecast = [], []
        for s in range(0, inputs.batch_size, _PREDICT_BATCH):
            part = index_inputs(inputs, slice(s, s + _PREDICT_BATCH))
            out = act_inference(self.model, inputs_to(part, self.ctx.device), self.cfg.act).outputs
            position.append(position_from_policy(out.policy_logits).cpu().numpy())
            forecast.append(out.forecast_fine.cpu().numpy())
        scale = self.prepared.inputs.artifacts.target_scale.out_b  # forecasts are in units of the return's std
        return Predictions(position=np.clip(np.concatenate(position).astype(np.float64), -1.0, 1.0),
                           forecast=np.concatenate(forecast).astype(np.float64) * scale)

    # ------------------------------------------------------------ inside

    def _prepare(self, train_idx: np.ndarray) -> PreparedData:
        """Inputs of every sample with an input pipeline (feature statistics, regimes, pattern library) fitted
        under walk-forward on the bars closed before the split's first sample after its last training sample,
        under CPCV on the bars inside the split's `fit_spans`."""
        t = self.data.t
        if self.cfg.validate.scheme == "cpcv":
            spans = fit_spans(train_idx, t, self.data.t_known)
            try:
                prepared = prepare_training(self.cfg, fit_spans=spans)
            except DataError as e:  # too few bars between the test groups for a statistic, regime or library
                raise ConfigurationError(
                    f"validate.cpcv_groups: with {self.cfg.validate.cpcv_groups} groups, "
                    f"{self.cfg.validate.cpcv_test_groups} of them tested, a split's training spans between its "
                    f"test groups are too short to fit the HRM's inputs on ({e}); use fewer groups or more bars"
                ) from e
        else:  # the samples a rolling window leaves out before it are older history, not test: one cut suffices
            last = min(int(train_idx.max()), len(t) - 2)  # at least one sample after the cut, as `dualhrq train`
            prepared = prepare_training(self.cfg, test_from=int(t[last + 1]))
        if not np.array_equal(prepared.windows.t, self.windows.t):
            raise DataError(f"{self.name}: the HRM's samples differ from the validation samples "
                            f"({len(prepared.windows.t)} vs {len(self.windows.t)}); build both from one config")
        return prepared

    def _training_rows(self, train_idx: np.ndarray) -> np.ndarray:
        """The windows' samples the split trains on: its own, and the other instruments' within the span of
        its own (first sample to last label) whose labels overlap none of the own samples the split leaves
        out (its test windows, their purge gaps and embargoes)."""
        w, t, t_known = self.windows, self.data.t, self.data.t_known
        left_out = np.setdiff1d(np.arange(len(t)), train_idx)
        others = ((w.instrument_index != w.instrument_index[self.rows[0]]) & (w.t >= t[train_idx].min())
                  & (w.t_known <= t_known[train_idx].max()))
        others &= ~overlaps(w.t, w.t_known, label_hulls(left_out, t, t_known))
        return np.union1d(self.rows[train_idx], np.flatnonzero(others))

    def _training_set(self, rows: np.ndarray) -> TrainingSet:
        """Inputs of the windows' samples ``rows``; targets of this instrument's from the validation labels,
        of the others' from their own (in the control run all are permuted)."""
        assert self.prepared is not None
        local = np.full(len(self.windows), -1)
        local[self.rows] = np.arange(len(self.rows))
        mine = local[rows] >= 0
        labels = {}
        for k in ("out_a", "out_b", "action", "quantity"):
            y = self.panel.labels(k)[rows].copy()
            y[mine] = np.asarray(self.data.labels[k])[local[rows][mine]]
            labels[k] = y
        labels["regime"] = self.prepared.samples.targets.regime[rows].numpy()
        labels["state"] = self.prepared.samples.targets.state[rows].numpy()
        targets = make_targets(labels, self.prepared.inputs.artifacts.target_scale, self.cfg.data.cost_bps)
        return TrainingSet(index_inputs(self.prepared.samples.inputs, torch.as_tensor(rows)), targets)


def fit_spans(train_idx: np.ndarray, t: np.ndarray, t_known: np.ndarray) -> list[tuple[int, int]]:
    """Closed-open [start, end) ns spans of bar time that a CPCV split's input pipeline may be fitted on: the
    gaps between the label hulls [t, t_known] of the samples the split leaves out (its test groups, their purge
    gaps and embargoes, and the training samples purged for labels that reach into them), those that hold a
    training sample. ``train_idx`` indexes ``t``/``t_known``, the samples in time order."""
    left_out = np.setdiff1d(np.arange(len(t)), train_idx)
    merged: list[list[int]] = []
    for lo, hi in label_hulls(left_out, t, t_known):
        if merged and lo <= merged[-1][1] + 1:  # a label reaching over the training samples in between
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    bounds = np.iinfo(np.int64)
    starts = [int(bounds.min)] + [hi + 1 for _, hi in merged]
    ends = [lo for lo, _ in merged] + [int(bounds.max)]
    train_t = t[train_idx]
    return [(start, end) for start, end in zip(starts, ends)
            if start < end and np.any((train_t >= start) & (train_t < end))]


def hrm_factories(cfg: Config, data: ValidationData, compare_fail_open: bool) -> list[PredictorFactory]:
    """The HRM predictor, and with ``compare_fail_open`` its regime-only twin, for `dualhrq validate`."""
    factories: list[PredictorFactory] = [lambda d, out: HRMPredictor(cfg, d, out, "hrm", patterns=True)]
    if compare_fail_open:
        factories.append(lambda d, out: HRMPredictor(cfg, d, out, "hrm_regime_only", patterns=False))
    return factories
