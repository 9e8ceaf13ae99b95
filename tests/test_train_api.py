"""The Python API (HRMPolicy) and the HRM validation predictor, on a checkpoint trained by `dualhrq train`."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from subcommand import run_subcommand

from dualhrq.api import HRMPolicy
from dualhrq.config import load_config
from dualhrq.data.sources import load_dataset
from dualhrq.errors import DataError
from dualhrq.evaluate.hrm_predictor import HRMPredictor, position_from_policy
from dualhrq.inputs import InputPipeline
from dualhrq.model import ACTIONS
from dualhrq.train.commands import register
from dualhrq.train.inputs import prepare_training
from dualhrq.train.loop import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "train_eurusd.yaml"


def _cli(*argv: str) -> int:
    return run_subcommand(register, *argv)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    assert _cli("train", "--config", str(CONFIG), "--out", str(out), "--steps", "20", "--stop-at", "2",
                "--no-progress") == 0
    return out


@pytest.fixture(scope="module")
def policy(run_dir):
    return HRMPolicy.from_checkpoint(run_dir)  # a run directory resolves to its newest checkpoint


def _frame(bars: int, end: int | None = None) -> pd.DataFrame:
    import backtesting.test

    df = backtesting.test.EURUSD
    return df.iloc[(end or len(df)) - bars:end or len(df)]


def test_train_command_writes_a_checkpoint_and_a_metrics_log(run_dir):
    assert latest_checkpoint(run_dir).name == "step_0000002"
    rec = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["step"] == 2 and np.isfinite(rec["loss"])


def test_act_returns_an_action_and_a_bounded_quantity_for_a_backtesting_frame(policy):
    action, quantity = policy.act(_frame(1200), instrument="EURUSD", timeframe="1h")
    assert action in ACTIONS
    m = policy.config.model
    assert quantity == 0.0 if action == "HOLD" else m.quantity_min <= quantity <= m.quantity_max  # HOLD sends none
    d = policy.decide(_frame(1200), "EURUSD", "1h")
    assert 1 <= d.segments <= policy.config.act.max_segments and d.patterns_used > 0
    assert abs(sum(d.probs) - 1) < 1e-5


def test_api_inputs_equal_the_training_inputs_at_the_same_bar(run_dir, policy):
    ckpt = latest_checkpoint(run_dir)
    prepared = prepare_training(load_config(CONFIG), InputPipeline.load(ckpt, load_config(CONFIG)))
    j = len(prepared.windows) - 300  # a held-out sample
    bar = int(prepared.windows.bar_index[j])
    bars = load_dataset("eurusd_1h").bars.slice(bar - 1199, bar + 1)  # close-stamped, ends at the sample's bar
    inputs, as_of, _ = policy.inputs_for(bars, "EURUSD", "1h")
    assert as_of == prepared.windows.t[j]
    for name in ("h_tokens", "l_tokens", "regime_features", "pattern_context", "pattern_mask", "instrument_id",
                 "timeframe_id"):
        torch.testing.assert_close(getattr(inputs, name)[0], getattr(prepared.samples.inputs, name)[j],
                                   rtol=1e-5, atol=1e-5, msg=name)


def test_unknown_instrument_acts_through_the_unknown_embedding(policy):
    inputs, _, _ = policy.inputs_for(_frame(1200), "GBPUSD", "1h")
    assert inputs.instrument_id.tolist() == [0]
    assert policy.act(_frame(1200), "GBPUSD", "1h")[0] in ACTIONS


def test_too_short_a_window_is_refused_with_what_it_needs(policy):
    with pytest.raises(DataError, match="need at least"):
        policy.act(_frame(100), "EURUSD", "1h")


def test_a_window_of_another_timeframe_is_refused(policy):
    with pytest.raises(DataError, match="timeframe"):
        policy.act(_frame(1200), "EURUSD", "1d")
    hourly = load_dataset("eurusd_1h").bars
    with pytest.raises(DataError, match="1h apart"):  # numpy bars are checked as frames are
        policy.act(hourly.slice(len(hourly) - 1200), "EURUSD", "1d")


def test_act_reads_close_stamped_frames_as_decide_does(policy):
    frame = _frame(1200)
    closed = frame.set_axis(frame.index + pd.Timedelta(hours=1))  # the same bars, stamped at their close
    d = policy.decide(frame, "EURUSD", "1h")
    assert policy.act(closed, "EURUSD", "1h", timestamps="close") == (d.action, d.quantity)


# ---------------------------------------------------------------- the validation predictor


def test_position_is_the_probability_of_an_up_move_minus_a_down_move():
    big = 20.0
    logits = torch.tensor([[big, 0, 0, 0, 0], [0, 0, 0, big, 0], [0, 0, big, 0, 0], [0, 0, 0, 0, big],
                           [0.0, 0, 0, 0, 0]])  # BUY, CLOSE_LONG, HOLD, CLOSE_SHORT, uniform
    torch.testing.assert_close(position_from_policy(logits), torch.tensor([1.0, -1.0, 0.0, 1.0, 0.0]))


def test_predictor_refits_inputs_on_the_split_and_twins_share_training(tmp_path):
    import msgspec

    from dualhrq.evaluate.validate import load_validation_data

    cfg = load_config(CONFIG)
    cfg = msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, steps=2, batch_size=8,
                                                                     device="cpu"))
    data = load_validation_data(cfg)
    train_idx, test_idx = np.arange(0, 1000), np.arange(1040, 1100)
    hrm = HRMPredictor(cfg, data, tmp_path, "hrm", patterns=True)
    state = hrm.fit(train_idx, None)
    # Nothing in the library became known after the split's last training sample.
    lib = hrm.prepared.inputs.library
    t_last = data.t[train_idx[-1]]
    hits = lib.query(np.zeros((1, lib.dim), np.float32), np.iinfo(np.int64).max, 10**6)
    assert hits.available_at[hits.valid].max() <= t_last
    with_patterns = hrm.predict(test_idx)

    twin = HRMPredictor(cfg, data, tmp_path, "hrm_regime_only", patterns=False)
    assert twin.fit(train_idx, None) == state  # found the same checkpoint, trained nothing new
    assert len(list(tmp_path.iterdir())) == 1
    regime_only = twin.predict(test_idx)
    assert len(with_patterns) == len(regime_only) == len(test_idx)
    assert np.abs(with_patterns.position).max() <= 1
    assert not np.array_equal(with_patterns.forecast, regime_only.forecast)  # the mask reaches the model

    changed = msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, lr=cfg.train.lr / 2))
    assert HRMPredictor(changed, data, tmp_path, "hrm").fit(train_idx, None) != state  # no stale model reused
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
def test_train_command_resumes_to_the_full_length(run_dir, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    assert _cli("train", "--config", str(CONFIG), "--out", str(out), "--resume", "--stop-at", "4",
                "--no-progress") == 0
    assert latest_checkpoint(out).name == "step_0000004"


def test_a_train_run_is_appended_to_the_run_ledger_in_the_runs_directory(run_dir):
    from dualhrq.evaluate.ledger import LEDGER_NAME, Ledger, config_hash

    with Ledger(run_dir.parent / LEDGER_NAME) as ledger:
        (run,) = [r for r in ledger.runs("train") if r.run_dir == str(run_dir.resolve())]
    assert run.config_hash == config_hash(load_config(CONFIG)) and run.seed == 0 and run.dataset == "eurusd_1h"
    assert run.metrics["step"] == 2 and np.isfinite(run.metrics["loss"])


def test_a_fresh_train_run_refuses_a_directory_that_holds_a_run(run_dir):
    from dualhrq.errors import ConfigurationError
    from dualhrq.train.loop import train

    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(ConfigurationError, match="holds a run already.*--resume"):
        train(load_config(CONFIG), run_dir, steps=20, stop_at=2, progress=False)
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing of the old run touched
