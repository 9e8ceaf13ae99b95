"""Several datasets in one run: one model across instruments, one held-out start for all, reports per instrument
and pooled."""

import json

import msgspec
import numpy as np
import pytest
from conftest import ROOT

from dualhrq.cli import main
from dualhrq.config import load_config
from dualhrq.data.sources import load_dataset, load_datasets
from dualhrq.data.windows import build_dataset
from dualhrq.errors import DataError
from dualhrq.evaluate.validate import PanelRows

DAILY = ["goog_1d", "sp500_1d", "nasdaq_1d"]


def _config(datasets=DAILY, **train):
    cfg = load_config("train_us_daily")
    settings = {"steps": 20, "batch_size": 8, "device": "cpu", "checkpoint_every": 10, "log_every": 10, **train}
    return msgspec.structs.replace(cfg, data=msgspec.structs.replace(cfg.data, dataset=list(datasets)),
                                   train=msgspec.structs.replace(cfg.train, **settings))


@pytest.fixture(scope="module")
def panel():
    cfg = _config()
    return cfg, build_dataset(load_datasets(cfg.data), cfg.model, cfg.data, pattern_window=cfg.patterns.window)


def test_every_instrument_is_held_out_from_one_time_and_none_trains_past_it(panel):
    _, w = panel
    assert w.instruments == ("GOOG", "SP500", "NASDAQ")
    assert np.all(np.diff(w.t) >= 0)  # time order across instruments
    cut = w.t[w.test].min()
    assert {int(i) for i in w.instrument_index[w.test]} == {0, 1, 2}
    assert w.t_known[w.train].max() < cut  # no label of any instrument reaches into the held-out tail
    assert np.array_equal(np.sort(np.concatenate([w.train, w.test])), np.sort(np.union1d(w.train, w.test)))


def test_an_instruments_samples_in_the_panel_are_its_own_samples_alone(panel):
    cfg, w = panel
    alone = build_dataset(load_dataset("sp500_1d"), cfg.model, cfg.data, pattern_window=cfg.patterns.window)
    rows = PanelRows(w, 1).rows
    for key in ("t", "t_known", "bar_index", "action", "state", "out_b", "pattern_features"):
        assert np.array_equal(getattr(w, key)[rows], getattr(alone, key)), key


def test_a_list_of_two_timeframes_is_refused_naming_the_entry():
    cfg = _config(["eurusd_1h", "goog_1d"])
    with pytest.raises(DataError, match=r"data.dataset\[1\]: goog_1d holds 1d bars.*eurusd_1h.*1h"):
        load_datasets(cfg.data)


def test_a_list_with_an_unknown_dataset_names_its_position():
    with pytest.raises(DataError, match=r"data.dataset\[1\]: 'nope'"):
        load_datasets(_config(["goog_1d", "nope"]).data)


def test_one_model_trains_across_instruments_and_reports_each(tmp_path):
    from dualhrq.train.loop import train

    cfg = _config()
    result = train(cfg, tmp_path, progress=False)
    assert set(result.best_test_by_instrument) == {"GOOG", "SP500", "NASDAQ"}
    pooled = result.best_test
    assert sum(r.samples for r in result.best_test_by_instrument.values()) == pooled.samples
    evals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in evals if e.get("eval")][-1]
    assert set(last["test_by_instrument"]) == {"GOOG", "SP500", "NASDAQ"}
    assert last["test_by_instrument"]["GOOG"]["samples"] == result.best_test_by_instrument["GOOG"].samples
    artifacts = json.loads((result.best / "inputs.json").read_text())
    assert artifacts["instruments"] == ["GOOG", "SP500", "NASDAQ"]  # each its own embedding row


@pytest.mark.parametrize("scheme", ["walk_forward", "cpcv"])
def test_no_other_instrument_trains_on_a_label_of_the_splits_test_window(scheme):
    from dualhrq.data.splits import splits_from_config
    from dualhrq.evaluate.hrm_predictor import HRMPredictor
    from dualhrq.evaluate.validate import load_validation_panel

    cfg = _config()
    cfg = msgspec.structs.replace(cfg, validate=msgspec.structs.replace(cfg.validate, scheme=scheme))
    data = load_validation_panel(cfg)["SP500"]
    hrm = HRMPredictor(cfg, data, None, "hrm")
    layout = splits_from_config(cfg.validate, data.t, data.t_known)
    w = hrm.windows
    seen = set()
    for split in getattr(layout, "splits", layout):
        rows = hrm._training_rows(split.train)
        others = rows[w.instrument_index[rows] != 1]
        assert len(others) > 0
        seen |= {int(i) for i in w.instrument_index[others]}
        test_t, test_known = data.t[split.test], data.t_known[split.test]
        overlap = (w.t[others, None] <= test_known[None]) & (w.t_known[others, None] >= test_t[None])
        assert not overlap.any(), f"split {split.index}: another instrument's label overlaps a test label"
    assert seen == {0, 2}  # GOOG (from 2005) and NASDAQ both train SP500's splits


def test_the_pooled_portfolio_is_the_mean_of_the_instruments_tested_at_each_time():
    from dualhrq.config import ValidateConfig
    from dualhrq.evaluate.leakage import LeakageReport
    from dualhrq.evaluate.pooled import pool, pooled_returns
    from dualhrq.evaluate.report import ValidationResult

    def result(days, hrm, hold):
        t = np.array([np.datetime64(f"2020-01-{d:02d}", "ns").astype(np.int64) for d in days])
        return ValidationResult("x", "walk_forward", {}, "hrm", [], {}, {}, t,
                                {"hrm": np.array(hrm), "buy_and_hold": np.array(hold)}, LeakageReport())

    results = {"A": result([1, 2, 3], [0.01, 0.02, 0.03], [0.0, 0.0, 0.0]),
               "B": result([2, 3, 4], [0.03, -0.02, 0.05], [0.01, 0.01, 0.01])}
    hrm = pooled_returns(results)["hrm"]
    assert np.allclose(hrm.to_numpy(), [0.01, 0.025, 0.005, 0.05])  # day 2: (0.02 + 0.03) / 2
    pooled = pool(results, ValidateConfig(bootstrap_reps=50), "hrm", 252.0)
    assert pooled.figures["hrm"].times == 4 and not pooled.spa  # no instrument run tested the two: no rival


def test_validate_reports_each_instrument_and_the_pooled_portfolio(tmp_path):
    cfg_path = tmp_path / "panel.yaml"
    cfg_path.write_text(
        f"base: {ROOT / 'config' / 'train_us_daily.yaml'}\n"
        "data:\n  dataset: [goog_1d, sp500_1d]\n"
        "train:\n  steps: 10\n  checkpoint_every: 10\n"
        f"validate:\n  train_bars: 800\n  test_bars: 500\n  step_bars: 500\n  permuted_control_splits: 0\n"
        f"  bootstrap_reps: 100\n  out_dir: {tmp_path / 'val'}\n")
    assert main(["validate", "--config", str(cfg_path), "--no-progress"]) == 0
    out = tmp_path / "val"
    assert (out / "GOOG" / "report.md").is_file() and (out / "SP500" / "report.md").is_file()
    pooled = json.loads((out / "report.json").read_text())
    assert pooled["instruments"] == ["GOOG", "SP500"]
    assert {"hrm", "buy_and_hold", "state_only"} <= set(pooled["figures"])
    assert "hrm" not in pooled["spa"] and "buy_and_hold" in pooled["spa"]
    assert "Per instrument" in (out / "report.md").read_text()


def test_the_permuted_control_shuffles_every_instruments_labels(panel):
    from dualhrq.evaluate.validate import load_validation_panel

    control = load_validation_panel(_config())["SP500"].permuted(seed=7).inputs
    _, w = panel
    for i in range(3):
        rows = w.of_instrument(i)
        shuffled = control.labels("out_b")[rows]
        assert not np.array_equal(shuffled, w.out_b[rows]) and np.array_equal(np.sort(shuffled), np.sort(w.out_b[rows]))
