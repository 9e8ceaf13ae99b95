"""The input artifacts: what turns bars into one model's inputs exactly as training made them, fitted on the
training window only, persisted the same way in a checkpoint and in a bundle:

```
DIR/inputs.json   Artifacts (this module): feature statistics, instruments, target scales, coarse rule,
                  pattern window, the decision rule fitted on the validation slice
DIR/patterns/     the pattern library, its encoder and the regime model (dualhrq.patterns.artifacts)
```
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from dualhrq.features import FeatureStats
from dualhrq.model.decision import DecisionRule
from dualhrq.persisted import read_record, write_record

ARTIFACTS_FILE = "inputs.json"
PATTERNS_DIR = "patterns"
FORMAT_VERSION = 1


class _Record(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class ColumnRecord(_Record):
    names: list[str]
    mean: list[float]
    std: list[float]


class StatsRecord(_Record):
    """FeatureStats as stored; FeatureStats checks it against the columns this code computes."""

    coarse: ColumnRecord
    fine: ColumnRecord
    regime: ColumnRecord


class TargetScale(_Record):
    """Training std of the coarse and fine forward returns: the model forecasts in these units."""

    out_a: float
    out_b: float


class Artifacts(_Record):
    format_version: int
    feature_stats: StatsRecord
    instruments: list[str]  # the instrument vocabulary, id order (id 0, "unknown", not listed)
    target_scale: TargetScale
    timeframe: str  # the fine bars' spacing the model was trained on, e.g. "1h"
    coarse_rule: str  # the coarse bars' resampling rule
    pattern_window: int  # fine bars per pattern: part of the inputs, fixed at training
    decision_rule: DecisionRule | None = None  # fitted per checkpoint after training; None before

    @classmethod
    def of(cls, stats: FeatureStats, instruments: list[str], target_scale: TargetScale, timeframe: str,
           coarse_rule: str, pattern_window: int) -> Artifacts:
        return cls(FORMAT_VERSION, msgspec.convert(stats.to_dict(), StatsRecord), list(instruments), target_scale,
                   timeframe, coarse_rule, pattern_window)

    def stats(self) -> FeatureStats:
        return FeatureStats.from_dict(msgspec.to_builtins(self.feature_stats))

    def save(self, directory: Path) -> None:
        write_record(directory / ARTIFACTS_FILE, self)

    @classmethod
    def read(cls, directory: Path) -> Artifacts:
        return read_record(directory / ARTIFACTS_FILE, cls, FORMAT_VERSION,
                           "retrain with `dualhrq train` (or export a checkpoint this version wrote)")
