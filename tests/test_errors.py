"""One error policy: bad arguments, options and data raise HRMError subclasses naming the field (so `dualhrq`
prints `error: ...` and exits 2), never a bare ValueError."""

from __future__ import annotations

from datetime import date

import msgspec
import numpy as np
import pytest

from dualhrq.bench.loadgen import run_load
from dualhrq.compliance.policies import momentum_policy, policy
from dualhrq.contract import as_feeds
from dualhrq.data.market_rules import LULD
from dualhrq.data.synthetic import random_bars
from dualhrq.errors import ConfigurationError, DataError, HRMError, InferenceError
from dualhrq.evaluate.statistics import expected_max_sharpe, probabilistic_sharpe_ratio
from dualhrq.model import HRM
from dualhrq.model.heads import Heads, readout
from dualhrq.patterns.context import drop_patterns
from dualhrq.runtime.client import Client


def _request(i, request_id):
    return b""


@pytest.mark.parametrize("call, error, field", [
    (lambda: run_load("tcp://127.0.0.1:1", _request, 1, rate=0.0), ConfigurationError, "rate"),
    (lambda: run_load("tcp://127.0.0.1:1", _request, 1, concurrency=0), ConfigurationError, "concurrency"),
    (lambda: Client("tcp://127.0.0.1:1", timeout_s=0), ConfigurationError, "timeout_s"),
    (lambda: Client("tcp://127.0.0.1:1", retries=-1), ConfigurationError, "retries"),
    (lambda: Client("tcp://127.0.0.1:1", fallback="sell"), ConfigurationError, "fallback"),
    (lambda: momentum_policy(random_bars(10), lookback=0), ConfigurationError, "lookback"),
    (lambda: policy("oracle", random_bars(10)), ConfigurationError, "policy"),
    (lambda: random_bars(0), ConfigurationError, "n"),
    (lambda: expected_max_sharpe(0, 1.0), ConfigurationError, "n_trials"),
    (lambda: probabilistic_sharpe_ratio(0.1, 0.0, 1, 0.0, 3.0), DataError, "at least 2 samples"),
    (lambda: drop_patterns(np.zeros((2, 1, 1)), np.ones((2, 1)), 1.5, np.random.default_rng(0)),
     ConfigurationError, "train.pattern_dropout"),
    (lambda: LULD.regime(date(2012, 1, 3)), DataError, "before the LULD plan"),
    (lambda: as_feeds({}), InferenceError, "missing graph inputs"),
])
def test_bad_arguments_raise_the_hrm_error_naming_the_field(call, error, field):
    with pytest.raises(error, match=field) as info:
        call()
    assert isinstance(info.value, HRMError) and not isinstance(info.value, ValueError)


def test_model_settings_outside_the_validated_config_are_configuration_errors(tiny_config):
    with pytest.raises(ConfigurationError, match="model.readout"):
        Heads(msgspec.structs.replace(tiny_config.model, readout="first"))
    with pytest.raises(ConfigurationError, match="model.readout"):
        readout(np.zeros((1, 2, 3)), "first")
    model = HRM(tiny_config.model)
    with pytest.raises(ConfigurationError, match="model.instrument_vocab"):
        model.grow_instruments(tiny_config.model.instrument_vocab)


def test_a_missing_onnx_runtime_names_the_install_command_instead_of_a_traceback(monkeypatch, capsys):
    from dualhrq import cli

    def needs_ort(args):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args = parser.parse_args(["data", "list"])
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    args.func = needs_ort
    assert cli.main([]) == 2
    assert "pip install 'dualhrq[cpu]'" in capsys.readouterr().err


def test_a_path_the_system_refuses_is_an_error_naming_it_not_a_traceback(tmp_path, capsys):
    from dualhrq import cli

    a_file = tmp_path / "bars.csv"
    a_file.write_text("not a directory")
    assert cli.main(["train", "--config", "hrm_tiny", "--out", str(a_file / "run"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and str(a_file) in err and "Traceback" not in err, err


def test_the_demo_without_onnx_runtime_stops_before_training(monkeypatch, tmp_path):
    import importlib.util

    from dualhrq import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"dualhrq\[cpu\]"):
        from dualhrq.bench.demo import run_demo

        run_demo(cli.build_parser().parse_args(["demo", "--out", str(tmp_path)]), cli.main)
    assert not any(tmp_path.iterdir())
