"""The run ledger: every validate run is recorded, the DSR trial count and PBO read it, MLflow mirrors it."""

import argparse
import json
import sqlite3
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_validate_report import TINY, VALIDATE, synthetic

from dualhrq.config import load_config
from dualhrq.errors import ConfigurationError
from dualhrq.evaluate.commands import add_validate_args, run_validate_command
from dualhrq.evaluate.ledger import LEDGER_NAME, Ledger, RunRecord, Trial, config_hash
from dualhrq.evaluate.metrics import Predictions


class Noise:
    """A stand-in HRM whose positions depend on its config (so each config is another strategy) and seed."""

    name = "hrm"

    def __init__(self, data, key: int):
        self.data, self.key = data, key

    def fit(self, train_idx, resume_from):
        return None

    def predict(self, test_idx):
        score = np.random.default_rng([self.key, int(test_idx[0])]).uniform(-1, 1, len(test_idx))
        return Predictions(position=score, forecast=score)


def noise_hrm(cfg, data, fail_open):
    key = int(config_hash(cfg), 16) % 2**32
    return [lambda d, _: Noise(d, key)]


def validate(tmp_path: Path, *argv: str, lr: float = 1e-3, out: str = "out") -> dict:
    config = tmp_path / f"validate_{lr}.yaml"
    config.write_text(yaml.safe_dump({"base": str(TINY), "train": {"lr": lr},
                                      "validate": {**VALIDATE, "permuted_control_splits": 0, "pbo_blocks": 4}}))
    parser = argparse.ArgumentParser()
    add_validate_args(parser)
    args = parser.parse_args(["--config", str(config), "--out", str(tmp_path / "runs" / out), "--no-progress",
                              *argv])
    assert run_validate_command(args, load_data=lambda cfg: synthetic(), hrm=noise_hrm) == 0
    return json.loads((tmp_path / "runs" / out / "report.json").read_text())


def test_three_runs_with_other_configs_raise_the_dsr_trial_count_by_three(tmp_path):
    first = validate(tmp_path, lr=1e-3)["dsr"]["hrm"]["n_trials"]
    assert first == 8  # the HRM and seven baselines
    for k, lr in enumerate((2e-3, 3e-3, 4e-3)):
        validate(tmp_path, lr=lr, out=f"out{k}")
    again = validate(tmp_path, lr=1e-3, out="again")
    assert again["dsr"]["hrm"]["n_trials"] == first + 3, "the three other HRM configs; the baselines did not change"
    assert again["earlier_trials"] == 3
    assert again["pbo"]["n_trials"] == 8 + 3  # the earlier HRMs were on the same samples: in the PBO matrix too


def test_a_validate_run_records_its_config_data_seed_metrics_and_verdict(tmp_path):
    report = validate(tmp_path)
    with Ledger(tmp_path / "runs" / LEDGER_NAME) as ledger:
        (run,) = ledger.runs("validate")
        trials = ledger.trials(run.data_fingerprint)
    cfg = load_config(tmp_path / "validate_0.001.yaml")
    assert run.config_hash == config_hash(cfg) and run.seed == cfg.train.seed
    assert run.verdict == report["verdict"]
    assert run.metrics["overall"]["hrm"]["sharpe"] == report["overall"]["hrm"]["sharpe"]
    assert run.metrics["pbo"] == report["pbo"]["pbo"]
    assert {t.predictor for t in trials} >= {"hrm", "ridge", "momentum"}
    assert run.run_dir == str((tmp_path / "runs" / "out").resolve())


def test_seeds_are_reported_as_a_spread_and_counted_as_trials_but_tested_against_no_one(tmp_path):
    report = validate(tmp_path, "--seeds", "3")
    assert report["seeds"] == ["hrm", "hrm_seed1", "hrm_seed2"]
    assert set(report["seed_spread"]["sharpe"]) == {"mean", "std", "min", "max"}
    assert report["seed_spread"]["sharpe"]["std"] > 0
    assert "hrm_seed1" not in report["spa"] and "ridge" in report["spa"]
    assert report["dsr"]["hrm"]["n_trials"] == 10
    md = (tmp_path / "runs" / "out" / "report.md").read_text()
    assert "## Spread over 3 seeds" in md and "## Probability of backtest overfitting" in md


def test_a_ledger_of_another_format_is_refused_naming_the_setting(tmp_path):
    path = tmp_path / LEDGER_NAME
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    with pytest.raises(ConfigurationError, match="tracking.ledger: .*format 99"):
        Ledger(path)


def test_identical_positions_are_one_trial_however_often_they_were_run(tmp_path):
    with Ledger(tmp_path / LEDGER_NAME) as ledger:
        record = RunRecord("validate", "c1", "data", "d", 0, "run")
        same = Trial("ridge", "samples", 0.1, np.array([0.5, -0.5]))
        ledger.append(record, [same, Trial("hrm", "samples", 0.2, np.array([1.0, 0.0]))])
        ledger.append(RunRecord("validate", "c2", "data", "d", 0, "run2"),
                      [same, Trial("hrm", "samples", 0.3, np.array([0.0, 1.0]))])
        ledger.append(RunRecord("validate", "c3", "other data", "d", 0, "run3"), [same])
        assert [t.predictor for t in ledger.trials("data")] == ["hrm", "ridge", "hrm"]


def test_mlflow_mirrors_the_run_its_metrics_and_its_reports(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    report = validate(tmp_path, "--tracking", f"mlflow:{store}")
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("dualhrq").experiment_id])
    assert run.data.tags["dualhrq.verdict"] == report["verdict"]
    assert run.data.params["config_hash"] == config_hash(load_config(tmp_path / "validate_0.001.yaml"))
    assert run.data.metrics["overall.hrm.sharpe"] == pytest.approx(report["overall"]["hrm"]["sharpe"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.md", "report.json", "config.json"}


def test_without_tracking_nothing_goes_to_mlflow(tmp_path, monkeypatch):
    import dualhrq.evaluate.tracking as tracking

    def refuse(*args, **kwargs):
        raise AssertionError("mirrored without --tracking")

    monkeypatch.setattr(tracking, "mirror_run", refuse)
    validate(tmp_path)
    assert (tmp_path / "runs" / LEDGER_NAME).is_file()


class _MlflowException(Exception):
    pass


def _unreachable_mlflow(monkeypatch, error: Exception) -> None:
    """An MLflow whose client fails at its first call, as with an unreachable server or an unwritable store."""
    class Client:
        def __init__(self, tracking_uri=None):
            pass

        def get_experiment_by_name(self, name):
            raise error

    modules = {name: types.ModuleType(name) for name in ("mlflow", "mlflow.exceptions", "mlflow.entities",
                                                          "mlflow.tracking")}
    modules["mlflow.exceptions"].MlflowException = _MlflowException
    modules["mlflow.entities"].Metric = modules["mlflow.entities"].Param = object
    modules["mlflow.tracking"].MlflowClient = Client
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("error", [_MlflowException("API request to http://127.0.0.1:9 failed: Connection refused"),
                                   PermissionError(13, "Permission denied")])
def test_an_mlflow_failure_is_a_clear_error_that_says_the_ledger_has_the_run(tmp_path, monkeypatch, capsys, error):
    _unreachable_mlflow(monkeypatch, error)
    config = tmp_path / "v.yaml"
    config.write_text(yaml.safe_dump({"base": str(TINY), "validate": {**VALIDATE, "permuted_control_splits": 0}}))
    parser = argparse.ArgumentParser()
    add_validate_args(parser)
    args = parser.parse_args(["--config", str(config), "--out", str(tmp_path / "runs" / "o"), "--no-progress",
                              "--tracking", "mlflow:http://127.0.0.1:9"])
    assert run_validate_command(args, noise_hrm, load_data=lambda cfg: synthetic()) == 2
    err = capsys.readouterr().err
    assert "--tracking: MLflow at http://127.0.0.1:9 failed" in err and str(error) in err
    assert "has the run already, as run 1" in err
    with Ledger(tmp_path / "runs" / LEDGER_NAME) as ledger:
        assert len(ledger.runs("validate")) == 1


def test_a_bad_tracking_flag_is_a_clear_error(tmp_path, capsys):
    config = tmp_path / "v.yaml"
    config.write_text(yaml.safe_dump({"base": str(TINY), "validate": VALIDATE}))
    parser = argparse.ArgumentParser()
    add_validate_args(parser)
    args = parser.parse_args(["--config", str(config), "--out", str(tmp_path / "o"), "--tracking", "wandb"])
    assert run_validate_command(args, load_data=lambda cfg: synthetic(), hrm=noise_hrm) == 2
    assert "--tracking" in capsys.readouterr().err


def test_the_runs_command_lists_what_the_ledger_recorded(tmp_path, capsys):
    from subcommand import run_subcommand

    from dualhrq.evaluate.commands import register

    report = validate(tmp_path)
    capsys.readouterr()
    assert run_subcommand(register, "runs", "--ledger", str(tmp_path / "runs" / LEDGER_NAME), "--json") == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["kind"] == "validate" and run["verdict"] == report["verdict"]
    assert run_subcommand(register, "runs", "--ledger", str(tmp_path / "runs" / LEDGER_NAME)) == 0
    assert f"trials {report['dsr']['hrm']['n_trials']}" in capsys.readouterr().out
    with pytest.raises(ConfigurationError, match="no run ledger"):
        run_subcommand(register, "runs", "--ledger", str(tmp_path / "nowhere.sqlite"))
