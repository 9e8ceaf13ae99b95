"""End to end on small synthetic bars: the report's content, resuming, leak exit codes, CPCV and comparisons."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dualhrq.config import Config, config_from_dict, config_to_dict
from dualhrq.data.bars import Bars, Dataset
from dualhrq.errors import ConfigurationError
from dualhrq.evaluate.commands import add_validate_args, run_validate_command
from dualhrq.evaluate.leakage import FeatureProbe, truncation_check
from dualhrq.evaluate.metrics import Predictions
from dualhrq.evaluate.validate import ValidationData, baseline_factories, run_validation, validation_data

TINY = Path(__file__).resolve().parents[1] / "config" / "hrm_tiny.yaml"
VALIDATE = {
    "train_bars": 300, "test_bars": 100, "step_bars": 100, "purge_bars": 5, "embargo_bars": 2,
    "bootstrap_reps": 50, "permuted_control_splits": 1, "truncation_cuts": 2,
}


def bars(n=700, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2022-03-01", periods=n, freq="h")
    return pd.DataFrame({"close": 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))}, index=idx)


def features(b):
    r = np.log(b["close"]).diff()
    return np.column_stack([r, r.rolling(10).sum(), r.rolling(20).std()])


def leaky_features(b):
    return np.column_stack([features(b), np.log(b["close"]).diff().shift(-1)])  # the next bar's return


def synthetic(leak: bool = False) -> ValidationData:
    """One sample per bar with complete features, scored on the next bar's return, known one bar later."""
    b = bars()
    fn = leaky_features if leak else features
    probe = FeatureProbe(len(b), lambda c: fn(b.iloc[:c]))
    x = probe.features_upto(len(b))
    idx = np.flatnonzero(np.isfinite(x[:-1]).all(axis=1))
    t, close = b.index.as_unit("ns").asi8, b["close"].to_numpy()
    returns = np.log(close[idx + 1] / close[idx])
    action = np.where(returns > 0, 0, 1)  # BUY before an up-bar, SELL before a down-bar, all from flat
    return ValidationData(name="synthetic hourly", t=t[idx], t_known=t[idx + 1], returns=returns, features=x[idx],
                          labels={"action": action}, states=np.zeros(len(idx), np.int64), probe=probe)


def config(tiny_config: Config, **overrides) -> Config:
    d = config_to_dict(tiny_config)
    d["validate"].update(VALIDATE, **overrides)
    return config_from_dict(d)


class Scripted:
    """A stand-in for the HRM: seeded positions (skill set by ``edge``), a JSON state counting its fits."""

    def __init__(self, data: ValidationData, name: str = "hrm", edge: float = 0.0, fail_at: int | None = None):
        self.data, self.name, self.edge, self.fail_at = data, name, edge, fail_at
        self.fits: list[object] = []

    def fit(self, train_idx, resume_from):
        if self.fail_at is not None and len(self.fits) == self.fail_at:
            raise KeyboardInterrupt  # the run is interrupted while fitting this split
        self.fits.append(resume_from)
        return {"fits": (resume_from or {"fits": 0})["fits"] + 1}

    def predict(self, test_idx):
        rng = np.random.default_rng(int(test_idx[0]))
        score = np.clip(rng.normal(0, 1, len(test_idx)) + self.edge * np.sign(self.data.returns[test_idx]), -3, 3) / 3
        return Predictions(position=score, forecast=score)


def recording(store: list[Scripted]):
    """A factory that keeps every Scripted predictor it builds, so a test can see what was fitted."""

    def factory(data, _):
        store.append(Scripted(data))
        return store[-1]

    return factory


def test_report_has_every_section_and_says_when_the_hrm_does_not_beat_the_baselines(tiny_config, tmp_path):
    cfg = config(tiny_config)
    data = synthetic()
    factories = [lambda d, _: Scripted(d), lambda d, _: Scripted(d, "hrm_regime_only")]
    factories += baseline_factories(cfg.validate)
    result = run_validation(cfg, data, factories, tmp_path, comparisons=[("hrm", "hrm_regime_only")], progress=False)

    assert not result.leak_found
    assert "does NOT beat the baselines" in result.verdict()
    md = (tmp_path / "report.md").read_text()
    for needle in ("## Leakage checks", "## Per split", "SPA consistent", "Reality Check", "## Deflated Sharpe Ratio",
                   "## hrm against hrm_regime_only on the same splits", "does NOT beat", "equity.png"):
        assert needle in md
    assert set(result.spa) == {"buy_and_hold", "momentum", "reversal", "ridge", "logistic", "state_only",
                               "multinomial"}  # the regime-only path is no baseline
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == result.verdict()
    assert len(report["splits"]) == 3 and len(report["per_split"]["ridge"]) == 3
    assert set(report["spa"]["ridge"]) == {"lower", "consistent", "upper", "reality_check"}
    checks = report["leakage"]["checks"]
    assert checks == {"future_correlation": "passed", "truncation": "passed", "permuted_label": "passed"}
    assert (tmp_path / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_clearly_better_hrm_is_reported_as_beating_the_baselines(tiny_config, tmp_path):
    # The scripted skill reads the labels: beyond any real model's correlation, and exactly what the
    # permuted-label control exists to catch (see the next test), so both are relaxed here.
    cfg = config(tiny_config, leak_max_corr=0.9, permuted_control_splits=0)
    data = synthetic()
    factories = [lambda d, _: Scripted(d, edge=1.5)] + baseline_factories(cfg.validate)
    result = run_validation(cfg, data, factories, tmp_path, progress=False)
    assert all(r.consistent < 0.05 for r in result.spa.values())
    assert "beats every baseline" in result.verdict()


def test_the_permuted_label_control_catches_a_predictor_that_reads_its_labels(tiny_config, tmp_path):
    cfg = config(tiny_config, leak_max_corr=0.9)
    result = run_validation(cfg, synthetic(), [lambda d, _: Scripted(d, edge=1.5)] + baseline_factories(cfg.validate),
                            tmp_path, progress=False)
    assert result.leakage.checks["permuted_label"] == "failed"
    assert [f.subject for f in result.leakage.findings] == ["hrm"]
    assert result.verdict().startswith("Leakage was found")


def test_without_an_hrm_the_report_says_it_covers_baselines_only(tiny_config, tmp_path):
    cfg = config(tiny_config)
    result = run_validation(cfg, synthetic(), baseline_factories(cfg.validate),
                            tmp_path, progress=False)
    assert result.spa == {} and "baselines only" in result.verdict()
    assert "baselines only" in (tmp_path / "report.md").read_text()


def test_an_interrupted_run_resumes_from_the_saved_splits_and_states(tiny_config, tmp_path):
    cfg = config(tiny_config, permuted_control_splits=0)
    data = synthetic()
    with pytest.raises(KeyboardInterrupt):
        run_validation(cfg, data, [lambda d, _: Scripted(d, fail_at=2)], tmp_path, progress=False)
    assert sorted(p.name for p in (tmp_path / "splits" / "hrm").iterdir()) == ["split_0000.json", "split_0001.json"]

    resumed: list[Scripted] = []
    result = run_validation(cfg, data, [recording(resumed)], tmp_path, progress=False)
    assert resumed[0].fits == [{"fits": 2}], "only the last split is fitted, continuing from split 1's saved state"
    assert len(result.per_split["hrm"]) == 3

    again: list[Scripted] = []
    run_validation(cfg, data, [recording(again)], tmp_path, progress=False)
    assert again[0].fits == []
    fresh: list[Scripted] = []
    run_validation(cfg, data, [recording(fresh)], tmp_path, resume=False, progress=False)
    assert fresh[0].fits == [None, {"fits": 1}, {"fits": 2}]


def test_changed_settings_invalidate_saved_splits(tiny_config, tmp_path):
    data = synthetic()
    cfg = config(tiny_config, permuted_control_splits=0)
    run_validation(cfg, data, [lambda d, _: Scripted(d)], tmp_path, progress=False)
    seen: list[Scripted] = []
    run_validation(config(tiny_config, permuted_control_splits=0, bootstrap_reps=60), data,
                   [recording(seen)], tmp_path, progress=False)
    assert seen[0].fits == [], "a reporting-only setting keeps the saved splits"
    run_validation(config(tiny_config, permuted_control_splits=0, momentum_lookback=5), data,
                   [recording(seen)], tmp_path, progress=False)
    assert len(seen[1].fits) == 3, "a setting that can change predictions recomputes them"


def test_cpcv_reports_every_backtest_path(tiny_config, tmp_path):
    cfg = config(tiny_config, scheme="cpcv", cpcv_groups=4, cpcv_test_groups=2)
    data = synthetic()
    result = run_validation(cfg, data, baseline_factories(cfg.validate), tmp_path, progress=False)
    assert len(result.splits) == 6
    assert all(len(v) == 3 for v in result.path_sharpes.values())  # φ = C(3, 1)
    assert result.overall["ridge"].n == len(data)  # a path predicts every sample once


def test_bundled_style_data_becomes_validation_samples_with_causal_features(tiny_config):
    rng = np.random.default_rng(7)
    n = 24 * 70
    c = 1.1 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    o = np.concatenate([[1.1], c[:-1]])
    t = np.datetime64("2021-01-04T01:00", "ns").astype(np.int64) + np.arange(n, dtype=np.int64) * 3_600_000_000_000
    fine = Bars(t, o, np.maximum(o, c) * 1.0005, np.minimum(o, c) * 0.9995, c, rng.uniform(50, 150, n))
    data = validation_data(tiny_config, Dataset("synthetic", "EURUSD", "1h", fine, "test"))
    windows = data.inputs
    assert len(data) == len(windows) and data.features.shape[1] == len(data.feature_names) == 81
    np.testing.assert_allclose(data.returns, windows.out_b, rtol=1e-5)  # label_horizon 1: the next bar's return
    assert np.all(data.t_known - data.t >= 24 * 3_600_000_000_000)  # outA is known only after a whole day
    assert set(data.labels) == {"out_a", "out_b", "action", "quantity"}
    assert truncation_check(data.probe, n_cuts=2, seed=0) == []


def write_config(tmp_path: Path, **validate) -> Path:
    path = tmp_path / "validate.yaml"
    path.write_text(yaml.safe_dump({"base": str(TINY), "validate": {**VALIDATE, **validate}}))
    return path


def command_args(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_validate_args(parser)
    config_path = write_config(tmp_path)
    return parser.parse_args(["--config", str(config_path), "--out", str(tmp_path / "out"), "--no-progress", *argv])


def scripted_hrm(cfg, data, fail_open):
    return [lambda d, _: Scripted(d)] + ([lambda d, _: Scripted(d, "hrm_regime_only")] if fail_open else [])


def test_command_exits_zero_on_clean_data_and_prints_the_report(tmp_path, capsys):
    code = run_validate_command(command_args(tmp_path), scripted_hrm, load_data=lambda cfg: synthetic())
    assert code == 0
    out = capsys.readouterr().out
    assert "hrm: Sharpe" in out and "report:" in out


def test_command_exits_non_zero_on_a_planted_leak(tmp_path, capsys):
    code = run_validate_command(command_args(tmp_path), scripted_hrm, load_data=lambda cfg: synthetic(leak=True))
    assert code == 1  # a check failed (the exit-code table in dualhrq.errors)
    out = capsys.readouterr().out
    assert "Leakage was found" in out
    assert "LEAK future_correlation: feature_3" in out
    assert "LEAK truncation" in out


def test_command_runs_the_wired_hrm_and_its_regime_only_variant(tmp_path):
    args = command_args(tmp_path, "--compare-fail-open")
    code = run_validate_command(args, scripted_hrm, load_data=lambda cfg: synthetic())
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["comparisons"][0]["a"] == "hrm" and report["comparisons"][0]["b"] == "hrm_regime_only"


def test_command_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    args = command_args(tmp_path)
    Path(args.config).write_text(yaml.safe_dump({"base": str(TINY), "validate": {"test_bars": 0}}))
    assert run_validate_command(args, scripted_hrm, load_data=lambda cfg: None) == 2  # bad input
    assert "validate.test_bars" in capsys.readouterr().err


def test_an_unreadable_saved_split_is_recomputed(tiny_config, tmp_path):
    cfg = config(tiny_config, permuted_control_splits=0)
    run_validation(cfg, synthetic(), [lambda d, _: Scripted(d)], tmp_path, progress=False)
    (tmp_path / "splits" / "hrm" / "split_0001.json").write_text("{not json")
    seen: list[Scripted] = []
    run_validation(cfg, synthetic(), [recording(seen)], tmp_path, progress=False)
    assert seen[0].fits == [{"fits": 1}]
    saved = json.loads((tmp_path / "splits" / "hrm" / "split_0001.json").read_text())
    assert saved["state"] == {"fits": 2} and set(saved["metrics"]) >= {"sharpe", "hit_rate", "ic"}


def test_validation_without_a_predictor_is_refused_naming_the_argument(tiny_config, tmp_path):
    with pytest.raises(ConfigurationError, match="predictors: none given"):
        run_validation(config(tiny_config), synthetic(), [], tmp_path, progress=False)
