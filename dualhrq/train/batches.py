"""Training samples as tensors, and the random draws of one training step.

Every random choice of a step (which sample a free slot admits, exploration, pattern dropout) is drawn for
the GLOBAL batch from a generator keyed on (seed, step), and each data-parallel rank takes its own slice.
So a run is reproducible from its step number alone (resume needs no generator state), and two ranks of
B/2 slots see exactly what one process of B slots sees.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from dualhrq.config import ActConfig, TrainConfig
from dualhrq.model import ModelInputs
from dualhrq.train.losses import Targets


def index_inputs(inputs: ModelInputs, idx: torch.Tensor | slice) -> ModelInputs:
    return ModelInputs(**{f.name: getattr(inputs, f.name)[idx] for f in fields(inputs)})


def inputs_to(inputs: ModelInputs, device: torch.device | str) -> ModelInputs:
    return ModelInputs(**{f.name: getattr(inputs, f.name).to(device) for f in fields(inputs)})


@dataclass
class TrainingSet:
    """N samples: model inputs (pattern context already retrieved as of each sample's time) and targets."""

    inputs: ModelInputs
    targets: Targets

    def __len__(self) -> int:
        return self.inputs.batch_size

    def subset(self, idx: np.ndarray | torch.Tensor) -> TrainingSet:
        i = torch.as_tensor(idx).to(torch.int64)
        return TrainingSet(index_inputs(self.inputs, i), self.targets.index(i))

    def to(self, device: torch.device | str) -> TrainingSet:
        return TrainingSet(inputs_to(self.inputs, device), self.targets.to(device))

    def batch(self, sample: torch.Tensor, drop_patterns: torch.Tensor) -> tuple[ModelInputs, Targets]:
        """The samples ``sample`` [b]; rows with ``drop_patterns`` get an all-zero pattern mask (regime-only)."""
        x = index_inputs(self.inputs, sample)
        keep = (~drop_patterns).unsqueeze(1).to(x.pattern_mask.dtype)
        return replace(x, pattern_mask=x.pattern_mask * keep), self.targets.index(sample)


@dataclass
class SlotDraws:
    """One step's random draws for this rank's slots."""

    sample: torch.Tensor  # [b] int64: the sample a slot admits if it is free
    explore_min: torch.Tensor  # [b] int64: exploration's minimum segment count, 0 = not exploring
    drop_patterns: torch.Tensor  # [b] bool: an admitted sample trains without patterns


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator for one step, well mixed from (seed, step) so neighbouring steps draw unrelated numbers."""
    key = np.random.SeedSequence([seed % 2**64, step]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(key))


def draw_slots(train: TrainConfig, act: ActConfig, step: int, n_samples: int, shard: slice) -> SlotDraws:
    """Draws for the global batch (``train.batch_size`` slots) at ``step``, sliced to this rank's ``shard``.

    Samples are drawn uniformly with replacement from ``n_samples``. Exploration (reference HRM): with
    probability ``act.exploration_prob`` a slot must run at least a random 2..act.max_segments segments before
    Q may halt it; with probability ``train.pattern_dropout`` an admitted sample trains without patterns.
    Keyed on ``train.seed`` and ``step``.
    """
    g = step_generator(train.seed, step)
    n = train.batch_size
    sample = torch.randint(0, n_samples, (n,), generator=g)
    explore = torch.rand(n, generator=g) < act.exploration_prob
    if act.max_segments >= 2:
        minimum = torch.randint(2, act.max_segments + 1, (n,), generator=g)
    else:
        minimum = torch.zeros(n, dtype=torch.int64)
    drop = torch.rand(n, generator=g) < train.pattern_dropout
    return SlotDraws(sample[shard], (explore * minimum)[shard], drop[shard])
