"""The Python API: a trained HRM as a trading policy for backtests and notebooks.

    from dualhrq.api import HRMPolicy
    policy = HRMPolicy.from_checkpoint("runs/train_eurusd")      # a run directory or one checkpoint
    action, quantity = policy.act(bars, instrument="EURUSD", timeframe="1h")

``bars`` holds the recent fine OHLCV bars, oldest first: a pandas DataFrame (a DatetimeIndex or a
``timestamp`` column, plus open/high/low/close/volume in any letter case, e.g. backtesting.py's
``self.data.df`` inside ``Strategy.next``) or ``dualhrq.data.bars.Bars``. The inputs are built by the
checkpoint's InputPipeline, as in training and serving (its feature statistics, the pattern library as of the
last bar), and the ACT loop runs segments until q_halt > q_continue after ``act.min_segments``, or
``act.max_segments``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch

from dualhrq.config import Config
from dualhrq.data.bars import Bars
from dualhrq.data.loader import bars_from_frame
from dualhrq.data.resample import resample, timeframe_name
from dualhrq.errors import DataError
from dualhrq.inputs import InputPipeline
from dualhrq.model import HRM, ModelInputs
from dualhrq.model.decision import Decision
from dualhrq.train.act import act_inference
from dualhrq.train.batches import inputs_to
from dualhrq.train.checkpoint import load_checkpoint
from dualhrq.train.loop import best_checkpoint


@dataclass(frozen=True)
class PolicyDecision(Decision):
    """Everything one call decided: the Decision the server would report, and how the ACT loop got there;
    ``act`` returns its action and quantity."""

    segments: int
    halted: Literal["q", "max"]
    patterns_used: int  # neighbours found in the library as of the last bar (0: regime-only)
    as_of: int  # ns: close time of the last fine bar


class HRMPolicy:
    """A checkpoint's model with the input pipeline that turns bars into its inputs."""

    def __init__(self, model: HRM, config: Config, inputs: InputPipeline) -> None:
        self.model = model.eval()
        self.config = config
        self.inputs = inputs
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu") -> HRMPolicy:
        """A checkpoint directory, or a training run directory (its best checkpoint: the lowest validation
        cross-entropy, else the newest)."""
        d = best_checkpoint(directory) or Path(directory)
        model, meta = load_checkpoint(d, device)
        return cls(model, meta.config, InputPipeline.load(d, meta.config))

    def act(self, observation_window: pd.DataFrame | Bars, instrument: str, timeframe: str,
            timestamps: Literal["open", "close"] = "open") -> tuple[str, float]:
        """(action, quantity) for the bar after the window's last one (``timestamps`` as in `decide`)."""
        d = self.decide(observation_window, instrument, timeframe, timestamps)
        return d.action, d.quantity

    @torch.no_grad()
    def decide(self, observation_window: pd.DataFrame | Bars, instrument: str, timeframe: str,
               timestamps: Literal["open", "close"] = "open") -> PolicyDecision:
        """The full decision. DataFrame timestamps mark bar opens by default (data vendors' and backtesting.py's
        convention); pass ``timestamps="close"`` for close-stamped frames. Bars are close-stamped already."""
        inputs, as_of, state = self.inputs_for(observation_window, instrument, timeframe, timestamps)
        res = act_inference(self.model, inputs_to(inputs, self.device), self.config.act)
        out = res.outputs
        heads = {"policy_logits": out.policy_logits[0], "quantity": out.quantity[0], "value": out.value[0],
                 "forecast_coarse": out.forecast_coarse[0], "forecast_fine": out.forecast_fine[0],
                 "regime_probs": torch.softmax(out.regime_logits[0], dim=-1)}
        decision = self.inputs.decide({k: v.double().cpu().numpy() for k, v in heads.items()}, state)
        return PolicyDecision(**vars(decision), segments=int(res.segments[0]),
                              halted="q" if bool(res.halted_by_q[0]) else "max",
                              patterns_used=int(inputs.pattern_mask.sum()), as_of=as_of)

    def inputs_for(self, observation_window: pd.DataFrame | Bars, instrument: str, timeframe: str,
                   timestamps: Literal["open", "close"] = "open") -> tuple[ModelInputs, int, int]:
        """(the model's inputs for the window's last bar [batch of 1], that bar's close time in ns, the label
        rule's position state there)."""
        fine = self._fine_bars(observation_window, timeframe, timestamps)
        p = self.inputs
        bars = p.window(resample(fine, p.artifacts.coarse_rule), fine)
        key = p.key(bars)
        sample = p.sample(bars, key)
        context, mask = p.context(key, np.array([sample.as_of]))
        feeds = {**p.graph_inputs(sample, instrument, timeframe), "pattern_context": context, "pattern_mask": mask}
        return ModelInputs(**{k: torch.from_numpy(v) for k, v in feeds.items()}), sample.as_of, sample.state

    @staticmethod
    def _fine_bars(window: pd.DataFrame | Bars, timeframe: str, timestamps: Literal["open", "close"]) -> Bars:
        if isinstance(window, Bars):
            window.validate("observation_window")
            if len(window) > 1:  # judged by the median spacing: weekend and holiday gaps are no new timeframe
                spacing = timeframe_name(int(np.median(np.diff(window.t))))
                if spacing.lower() != timeframe.lower():
                    raise DataError(f"timeframe: {timeframe!r} given, but the observation window's bars are "
                                    f"{spacing} apart")
            return window
        if not isinstance(window, pd.DataFrame):
            raise DataError(f"observation_window: expected a pandas DataFrame or Bars, got {type(window).__name__}")
        frame = window.rename_axis("timestamp").reset_index() if isinstance(window.index, pd.DatetimeIndex) else window
        bars, spacing = bars_from_frame(frame, "observation_window", timestamps)
        if spacing.lower() != timeframe.lower():
            raise DataError(f"timeframe: {timeframe!r} given, but the observation window's bars are {spacing} apart")
        return bars
