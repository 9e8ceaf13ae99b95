"""The HRM validation predictor fits its inputs (feature statistics, target scales, regime model, pattern library)
on nothing of a split's test window: under walk-forward by its cut, under CPCV, whose training groups follow
its test groups, by fitting only inside the time spans between them."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest

from dualhrq.config import Config, load_config
from dualhrq.data.sources import load_dataset
from dualhrq.data.splits import label_hulls, splits_from_config
from dualhrq.errors import ConfigurationError
from dualhrq.evaluate.commands import add_validate_args, run_validate_command
from dualhrq.evaluate.hrm_predictor import HRMPredictor, fit_spans, hrm_factories
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
    entries = {k: getattr(hits, k)[0][order].tolist() for k in ("window_start", "window_end", "available_at", "outcome",
                                                             "embedding")}
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


def _cpcv_config(dataset: str = "eurusd_1h") -> Config:
    return _config(dataset, scheme="cpcv", cpcv_groups=6, cpcv_test_groups=2)


def _middle_split(cfg: Config):
    """A CPCV split with training groups before, between and after its test groups (1 and 3 of 6)."""
    data = load_validation_data(cfg)
    split = next(s for s in splits_from_config(cfg.validate, data.t, data.t_known).splits if s.test_groups == (1, 3))
    assert split.train.min() < split.test.min() and split.train.max() > split.test.max()
    return data, split


def test_a_marker_planted_in_a_cpcv_test_group_never_reaches_the_fitted_inputs(tmp_path):
    cfg = _cpcv_config(_write_bars(tmp_path / "clean.csv"))
    data, split = _middle_split(cfg)
    group = split.test[split.test < split.test[0] + len(split.test) // 2]  # test group 1, before training group 2
    clean = _fitted_inputs(cfg, split.train, tmp_path / "a")

    # A single cut after the last training sample would hold the whole test group: the spans hold none of it.
    spans = fit_spans(split.train, data.t, data.t_known)
    assert len(spans) == 3
    left_out = label_hulls(split.test, data.t, data.t_known)
    lib = clean["library"]
    for start, end in zip(lib["window_start"], lib["available_at"]):  # window and outcome inside one span
        assert any(lo <= start and end < hi for lo, hi in spans)
        assert not any(start <= hi and end >= lo for lo, hi in left_out)
    assert any(s < data.t[group[0]] for s in lib["window_start"]) and any(e > data.t[group[-1]]
                                                                          for e in lib["available_at"])

    marked = _cpcv_config(_write_bars(tmp_path / "test_marked.csv",
                                      (int(data.bar_index[group[0]]), int(data.bar_index[group[-1]]))))
    assert _fitted_inputs(marked, split.train, tmp_path / "b") == clean

    # The comparison sees a marker where a fit may read it: inside the training group between the test groups
    # (past its first regime warm-up, where library entries start).
    between = split.train[(split.train > group[-1]) & (split.train < split.test[-1])]
    first = int(data.bar_index[between[-100]])
    inside = _cpcv_config(_write_bars(tmp_path / "train_marked.csv", (first, first + 50)))
    fitted = _fitted_inputs(inside, split.train, tmp_path / "c")
    for part in ("artifacts", "regimes", "library"):
        assert fitted[part] != clean[part], part


def test_cpcv_spans_leave_out_every_test_group_with_its_purge_gap_and_embargo():
    cfg = _cpcv_config()
    data, split = _middle_split(cfg)
    spans = fit_spans(split.train, data.t, data.t_known)
    t, t_known = data.t, data.t_known
    left_out = np.setdiff1d(np.arange(len(t)), split.train)
    for lo, hi in spans:  # no left-out sample's bar or label inside a span
        assert not np.any((t[left_out] < hi) & (t_known[left_out] >= lo))
    in_span = np.zeros(len(t), dtype=bool)
    for lo, hi in spans:
        in_span |= (t >= lo) & (t_known < hi)
    # Everything else is fitted on: only training samples whose labels reach a left-out hull fall outside.
    assert np.isin(np.flatnonzero(in_span), split.train).all()
    assert in_span[split.train].mean() > 0.95


def test_the_validate_command_validates_the_hrm_under_cpcv(tmp_path, capsys):
    config = tmp_path / "cpcv.yaml"
    config.write_text(f"base: {CONFIG}\ntrain: {{steps: 1, batch_size: 8, device: cpu}}\nvalidate: {{scheme: cpcv, "
                      "cpcv_groups: 3, cpcv_test_groups: 1, permuted_control_splits: 0, bootstrap_reps: 20}\n")
    parser = argparse.ArgumentParser()
    add_validate_args(parser)
    args = parser.parse_args(["--config", str(config), "--out", str(tmp_path / "out"), "--no-progress"])
    assert run_validate_command(args, hrm_factories) == 0
    assert "hrm: Sharpe" in capsys.readouterr().out
    assert len(list((tmp_path / "out").rglob("hrm/split_*.json"))) == 3


def test_cpcv_groups_too_short_to_fit_the_hrm_on_name_the_setting(tmp_path):
    cfg = _config(scheme="cpcv", cpcv_groups=40, cpcv_test_groups=20)
    data = load_validation_data(cfg)
    # The split testing every other group (not enumerated: C(40, 20) splits): no span holds a regime warm-up.
    train = np.concatenate(np.array_split(np.arange(len(data.t)), 40)[1::2])
    with pytest.raises(ConfigurationError, match="validate.cpcv_groups: with 40 groups"):
        HRMPredictor(cfg, data, tmp_path / "models", "hrm").fit(train, None)
