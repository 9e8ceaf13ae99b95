"""The HRM validation predictor fits its inputs (feature statistics, target scales, regime model, pattern library)
on nothing of a split's test window: under walk-forward by its cut, and CPCV, whose training groups follow its
test groups, is refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from dualhrq.config import Config, load_config
from dualhrq.data.sources import load_dataset
from dualhrq.data.splits import splits_from_config
from dualhrq.errors import ConfigurationError
from dualhrq.evaluate.commands import add_validate_args, run_validate_command
from dualhrq.evaluate.hrm_predictor import HRMPredictor, hrm_factories
from dualhrq.evaluate.validate import load_validation_data

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "train_eurusd.yaml"


def _config(dataset: str = "eurusd_1h", **validate: object) -> Config:
    cfg = load_config(CONFIG)
    return msgspec.structs.replace(
        cfg, train=msgspec.structs.replace(cfg.train, steps=1, batch_size=8, device="cpu"),
        data=msgspec.structs.replace(cfg.data, dataset=dataset, instrument="EURUSD", timestamps="close"),
        validate=msgspec.structs.replace(cfg.validate, **validate))


def _write_bars(path: Path, marked: tuple[int, int] | None = None) -> str:
    """EURUSD's hourly bars as a close-stamped CSV; ``marked``: bars [first, last] with every price 1.5 times
    higher and 100 times the volume (a marker no fit of other bars can reproduce)."""
    b = load_dataset("eurusd_1h").bars
    frame = pd.DataFrame({"timestamp": pd.to_datetime(b.t, utc=True), "open": b.o, "high": b.h, "low": b.l,
                          "close": b.c, "volume": b.v})
    if marked is not None:
        rows = slice(marked[0], marked[1] + 1)
        frame.iloc[rows, 1:5] *= 1.5
        frame.iloc[rows, 5] = frame.iloc[rows, 5] * 100 + 100
    frame.to_csv(path, index=False)
    return str(path)


def _fitted_inputs(cfg: Config, train_idx: np.ndarray, model_dir: Path) -> dict[str, object]:
    """What the split's fit derived from the bars: input artifacts, regime model and every library entry."""
    hrm = HRMPredictor(cfg, load_validation_data(cfg), model_dir, "hrm")
    hrm.fit(train_idx, None)
    assert hrm.prepared is not None
    inputs = hrm.prepared.inputs
    lib = inputs.library
    hits = lib.query(np.zeros((1, lib.dim), np.float32), np.iinfo(np.int64).max, 10**6)
    order = np.argsort(hits.window_end[0])
    entries = {k: getattr(hits, k)[0][order].tolist() for k in ("window_end", "available_at", "outcome", "embedding")}
    return {"artifacts": msgspec.to_builtins(inputs.artifacts), "regimes": inputs.regimes.to_dict(),
            "library": entries}


def test_a_marker_planted_in_a_walk_forward_test_window_never_reaches_the_fitted_inputs(tmp_path):
    cfg = _config(_write_bars(tmp_path / "clean.csv"))
    data = load_validation_data(cfg)
    split = splits_from_config(cfg.validate, data.t, data.t_known)[0]
    test_bars = (int(data.bar_index[split.test[0]]), int(data.bar_index[split.test[-1]]))
    clean = _fitted_inputs(cfg, split.train, tmp_path / "a")

    marked = _config(_write_bars(tmp_path / "test_marked.csv", test_bars))
    assert _fitted_inputs(marked, split.train, tmp_path / "b") == clean

    # The comparison sees a marker where a fit may read it: inside the split's training window.
    first = int(data.bar_index[split.train[len(split.train) // 2]])
    inside = _config(_write_bars(tmp_path / "train_marked.csv", (first, first + 50)))
    assert _fitted_inputs(inside, split.train, tmp_path / "c") != clean


def test_cpcv_is_refused_for_the_hrm_before_anything_is_fitted(tmp_path):
    cfg = _config(scheme="cpcv")
    data = load_validation_data(cfg)
    with pytest.raises(ConfigurationError, match="validate.scheme: cpcv"):
        hrm_factories(cfg, data, False)
    split = splits_from_config(cfg.validate, data.t, data.t_known).splits[0]
    assert split.test.max() < split.train.min()  # its test groups come first: its inputs' cut would follow them
    with pytest.raises(ConfigurationError, match="validate.scheme: cpcv"):
        HRMPredictor(cfg, data, tmp_path / "models", "hrm").fit(split.train, None)
    assert not (tmp_path / "models").exists()


def test_the_validate_command_refuses_cpcv_with_a_clear_error(tmp_path, capsys):
    config = tmp_path / "cpcv.yaml"
    # Small enough that a regression finishes quickly instead of validating for minutes.
    config.write_text(f"base: {CONFIG}\ntrain: {{steps: 1, batch_size: 8, device: cpu}}\nvalidate: {{scheme: cpcv, "
                      "cpcv_groups: 3, cpcv_test_groups: 1, permuted_control_splits: 0, bootstrap_reps: 20}\n")
    parser = argparse.ArgumentParser()
    add_validate_args(parser)
    args = parser.parse_args(["--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"])
    assert run_validate_command(args, hrm_factories) == 2
    err = capsys.readouterr().err
    assert "validate.scheme: cpcv" in err and "walk_forward" in err
    assert not (tmp_path / "out").exists()
