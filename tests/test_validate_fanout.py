"""validate's tasks fanned out to local processes or Ray give the sequential run's report, bit for bit."""

import sys

import cloudpickle
import pytest
import test_validate_report
from test_validate_report import Scripted, config, synthetic

from dualhrq.errors import ConfigurationError
from dualhrq.evaluate.fanout import LocalProcesses, RayRunner, Sequential, runner_for
from dualhrq.evaluate.validate import baseline_factories, run_validation

# The stand-in predictor and the synthetic data live in test modules no worker can import: ship them by value.
cloudpickle.register_pickle_by_value(test_validate_report)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def reports(tiny_config, tmp_path, runner):
    cfg = config(tiny_config, permuted_control_splits=1)
    factories = [lambda d, _: Scripted(d), lambda d, _: Scripted(d, "hrm_seed1", edge=0.2)]
    factories += baseline_factories(cfg.validate)[:3]
    out = {}
    for name, r in (("sequential", Sequential()), ("fanned", runner)):
        run_validation(cfg, synthetic(), factories, tmp_path / name, seeds=["hrm_seed1"], runner=r, progress=False)
        out[name] = (tmp_path / name / "report.json").read_text()
    return out


def test_local_processes_give_the_sequential_report_bit_for_bit(tiny_config, tmp_path):
    out = reports(tiny_config, tmp_path, LocalProcesses(2))
    assert out["fanned"] == out["sequential"]
    assert '"permuted_label": "passed"' in out["fanned"]  # the controls ran in the workers too


@pytest.mark.slow  # starting a local Ray takes about two minutes on two busy cores
def test_a_local_ray_gives_the_sequential_report_bit_for_bit(tiny_config, tmp_path):
    pytest.importorskip("ray")
    out = reports(tiny_config, tmp_path, RayRunner(None))
    assert out["fanned"] == out["sequential"]


def test_two_predictors_of_one_name_are_refused_before_any_task_runs(tiny_config, tmp_path):
    cfg = config(tiny_config)
    with pytest.raises(ConfigurationError, match="two are named 'hrm'"):
        run_validation(cfg, synthetic(), [lambda d, _: Scripted(d), lambda d, _: Scripted(d)], tmp_path,
                       runner=LocalProcesses(2), progress=False)
    assert not (tmp_path / "splits").exists()


def test_the_flags_pick_the_runner_and_refuse_both_at_once():
    assert isinstance(runner_for(None, None), Sequential) and isinstance(runner_for(None, 1), Sequential)
    assert isinstance(runner_for(None, 3), LocalProcesses)
    with pytest.raises(ConfigurationError, match="choose one"):
        runner_for("local", 2)


@pytest.mark.slow  # trains the tiny HRM on three splits twice: minutes on two cores
def test_the_hrm_trained_in_worker_processes_reports_bit_for_bit(tmp_path):
    import msgspec

    from dualhrq.config import load_config
    from dualhrq.evaluate.hrm_predictor import hrm_factories
    from dualhrq.evaluate.validate import load_validation_data

    cfg = load_config("train_eurusd")
    cfg = msgspec.structs.replace(
        cfg, train=msgspec.structs.replace(cfg.train, steps=3, batch_size=8, device="cpu", checkpoint_every=3),
        validate=msgspec.structs.replace(cfg.validate, train_bars=3500, test_bars=500, step_bars=500,
                                         permuted_control_splits=0, bootstrap_reps=50))
    data = load_validation_data(cfg)
    factories = hrm_factories(cfg, data, False) + baseline_factories(cfg.validate)[:1]
    out = {}
    for name, runner in (("sequential", Sequential()), ("fanned", LocalProcesses(2))):
        run_validation(cfg, data, factories, tmp_path / name, runner=runner, progress=False)
        out[name] = (tmp_path / name / "report.json").read_text()
    assert out["fanned"] == out["sequential"]
