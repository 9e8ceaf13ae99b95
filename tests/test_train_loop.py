"""The training loop on real EURUSD hourly bars: loss falls, resume is bit-exact, checkpoints carry what rebuilds
the inputs, ACT targets and pattern dropout behave as specified."""

import json
import math
from pathlib import Path

import msgspec
import pytest
import torch
import torch.nn.functional as F

from dualhrq.config import ActConfig, Config, TrainConfig, load_config
from dualhrq.errors import ConfigurationError, ConvergenceError
from dualhrq.inputs import InputPipeline
from dualhrq.model import Carry, ModelInputs, ModelOutputs
from dualhrq.train.act import SlotState, act_inference, halt_decision, q_continue_target
from dualhrq.train.batches import TrainingSet, draw_slots
from dualhrq.train.distributed import DistContext
from dualhrq.train.inputs import prepare_training
from dualhrq.train.loop import (
    STATE_FILE,
    EvalSets,
    latest_checkpoint,
    load_train_state,
    lr_factor,
    new_trainer,
    resume_trainer,
    run,
)
from dualhrq.train.losses import DEFAULT_LOSS_WEIGHTS, Targets, loss_weights, segment_loss

ROOT = Path(__file__).resolve().parents[1]
CPU = DistContext(0, 1, torch.device("cpu"))


def _config(**train: object) -> Config:
    cfg = load_config(ROOT / "config" / "train_eurusd.yaml")
    quick = {"device": "cpu", "batch_size": 16, "checkpoint_every": 1000, "log_every": 1000}
    return msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, **{**quick, **train}))


@pytest.fixture(scope="module")
def prepared():
    return prepare_training(_config())


def _fixed_loss(trainer, data: TrainingSet) -> float:
    """Weighted loss of one segment from a zero carry on fixed samples, without the two Q terms: their targets
    move with the policy (q_halt's is "the policy is right", which jumps once it learns HOLD), the others'
    do not, so this sum is comparable before and after training."""
    model = trainer.model
    with torch.no_grad():
        carry, out = model(data.inputs, model.initial_carry(len(data)))
        _, nxt = model(data.inputs, carry)
        target = q_continue_target(nxt.q_logits, torch.zeros(len(data), dtype=torch.bool))
        terms = segment_loss(out, data.targets, target, trainer.weights)[1]
        return sum(trainer.weights[k] * float(v) for k, v in terms.items() if not k.startswith("q_"))


def test_a_few_dozen_steps_lower_the_loss_on_real_eurusd(prepared):
    trainer = new_trainer(_config(), prepared.train, CPU, total_steps=30)
    probe = prepared.train.subset(torch.arange(0, len(prepared.train), 13))
    before = _fixed_loss(trainer, probe)
    run(trainer, 30, None, progress=False)
    after = _fixed_loss(trainer, probe)
    assert after < 0.9 * before, f"loss {before:.3f} -> {after:.3f}"


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_resume_continues_bit_exactly(prepared, tmp_path):
    cfg = _config(checkpoint_every=2)
    straight = new_trainer(cfg, prepared.train, CPU, total_steps=6)
    run(straight, 6, tmp_path / "a", progress=False)

    first = new_trainer(cfg, prepared.train, CPU, total_steps=6)
    run(first, 3, tmp_path / "b", progress=False)  # stopped early: its last checkpoint is step 3
    assert latest_checkpoint(tmp_path / "b").name == "step_0000003"
    resumed = resume_trainer(latest_checkpoint(tmp_path / "b"), prepared.train, CPU)
    assert resumed.step == 3
    run(resumed, 6, tmp_path / "b", progress=False)

    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(straight.slots.carry.z_H, resumed.slots.carry.z_H)
    assert straight.optimizer.state_dict()["state"][0]["exp_avg"].equal(
        resumed.optimizer.state_dict()["state"][0]["exp_avg"])
    assert not torch.equal(a["heads.policy.weight"], _weights(first)["heads.policy.weight"])


def test_checkpoint_carries_the_artifacts_that_rebuild_the_training_inputs(prepared, tmp_path):
    cfg = _config()
    trainer = new_trainer(cfg, prepared.train, CPU, total_steps=2)
    result = run(trainer, 2, tmp_path, inputs=prepared.inputs,
                 eval_sets=EvalSets.of(prepared.train, prepared.val, prepared.test), progress=False)
    ckpt = result.checkpoint
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    artifacts = json.loads((ckpt / "inputs.json").read_text())
    assert {"feature_stats", "instruments", "target_scale", "decision_rule"} <= set(artifacts)
    assert artifacts["instruments"] == ["EURUSD"] and (ckpt / "patterns" / "regimes.json").is_file()
    assert meta["val_cross_entropy"] == meta["metrics"]["val_cross_entropy"]
    assert {"val_cross_entropy", "test_cross_entropy", "test_state_ce", "test_non_hold_share"} <= set(meta["metrics"])
    assert (tmp_path / "best").read_text() == ckpt.name and (tmp_path / "finished").read_text() == "2\n"
    assert load_train_state(ckpt)["step"] == 2  # loads with weights_only=True
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 2 and math.isfinite(lines[0]["loss"])

    rebuilt = prepare_training(cfg, InputPipeline.load(ckpt, cfg))
    for name in ("h_tokens", "l_tokens", "regime_features", "pattern_context", "pattern_mask", "instrument_id"):
        assert torch.equal(getattr(rebuilt.samples.inputs, name), getattr(prepared.samples.inputs, name)), name
    assert torch.equal(rebuilt.samples.targets.regime, prepared.samples.targets.regime)


def test_pattern_context_never_comes_from_the_future(prepared):
    w, lib = prepared.windows, prepared.inputs.library
    hits = lib.query(prepared.inputs.encoder.encode(w.pattern_features[:50]), w.t[:50], 4)
    assert (hits.available_at[hits.valid] <= w.t[:50, None].repeat(4, 1)[hits.valid]).all()
    assert prepared.samples.inputs.pattern_mask.sum() > 0


def test_missing_train_state_is_a_clear_error(tmp_path):
    from dualhrq.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=STATE_FILE):
        load_train_state(tmp_path)


# ---------------------------------------------------------------- ACT targets


def _act(**kw):
    return msgspec.structs.replace(_config().act, **kw)


def test_halting_follows_q_after_the_minimum_and_always_at_the_maximum():
    act = _act(min_segments=2, max_segments=3)
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # halt, halt, go, go, halt
    steps = torch.tensor([1, 2, 2, 3, 2])
    explore = torch.tensor([0, 0, 0, 0, 3])  # the last slot explores: it must reach 3 segments
    halted, is_last = halt_decision(q, steps, act, explore)
    assert halted.tolist() == [False, True, False, True, False]
    assert is_last.tolist() == [False, False, False, True, False]


def test_q_continue_target_bootstraps_from_the_next_segment():
    nxt = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [-3.0, 0.5]])
    target = q_continue_target(nxt, torch.tensor([False, False, True]))
    expected = torch.sigmoid(torch.tensor([2.0, 0.5, -3.0]))  # max of the two, or q_halt at the last segment
    torch.testing.assert_close(target, expected)


def _outputs(policy: torch.Tensor, q: torch.Tensor) -> ModelOutputs:
    b = len(policy)
    z = torch.zeros(b)
    return ModelOutputs(policy_logits=policy, quantity=z, value=z, q_logits=q, forecast_coarse=z,
                        forecast_fine=z, regime_logits=torch.zeros(b, 3))


def _targets(action: list[int]) -> Targets:
    b = len(action)
    z = torch.zeros(b)
    return Targets(action=torch.tensor(action), quantity=z, out_a=z, out_b=z, action_return=torch.ones(b),
                   cost=torch.full((b,), 0.25), regime=torch.zeros(b, dtype=torch.int64),
                   state=torch.zeros(b, dtype=torch.int64))


def test_q_halt_target_is_whether_the_segment_policy_is_correct():
    policy = torch.tensor([[5.0, 0, 0, 0, 0], [0, 5.0, 0, 0, 0]])  # predicts BUY, SELL
    q = torch.tensor([[0.3, -1.0], [-0.7, 2.0]])
    weights = loss_weights(_config().train)
    _, terms = segment_loss(_outputs(policy, q), _targets([0, 0]), torch.tensor([0.2, 0.9]), weights)
    expected_halt = F.binary_cross_entropy_with_logits(q[:, 0], torch.tensor([1.0, 0.0]))  # right, wrong
    expected_continue = F.binary_cross_entropy_with_logits(q[:, 1], torch.tensor([0.2, 0.9]))
    torch.testing.assert_close(terms["q_halt"], expected_halt)
    torch.testing.assert_close(terms["q_continue"], expected_continue)
    # The value head regresses what the policy earns in expectation: from flat, BUY +1 - cost/2 (one unit of
    # exposure changes; the round trip costs 0.25), SELL -1 - cost/2, the others nothing.
    p = policy.softmax(dim=-1)
    expected = p[:, 0] * 0.875 + p[:, 1] * -1.125
    torch.testing.assert_close(terms["value"], F.huber_loss(torch.zeros(2), expected))


def test_halted_slots_admit_fresh_samples_with_a_zero_carry():
    b = 3
    slots = SlotState(Carry(torch.ones(b, 2, 4), torch.ones(b, 3, 4)), torch.tensor([2, 1, 3]),
                      torch.tensor([False, True, False]), torch.tensor([10, 11, 12]), torch.zeros(b, dtype=torch.bool))
    admitted = slots.admit(torch.tensor([20, 21, 22]), torch.tensor([True, True, True]))
    assert admitted.sample.tolist() == [10, 21, 12]
    assert admitted.steps.tolist() == [2, 0, 3]
    assert admitted.drop_patterns.tolist() == [False, True, False]
    assert admitted.carry.z_H[1].abs().sum() == 0 and admitted.carry.z_H[0].eq(1).all()
    assert not admitted.halted.any()


def test_inference_halts_each_sample_at_its_own_segment(tiny_config):
    from dualhrq.model import HRM

    torch.manual_seed(0)
    model = HRM(tiny_config.model).eval()
    x = ModelInputs.random(tiny_config.model, 4)
    with torch.no_grad():  # make sample 0 halt at once, the others never
        model.heads.q.bias.copy_(torch.tensor([0.0, 0.0]))
        model.heads.q.weight.zero_()
    act = _act(min_segments=1, max_segments=3)
    out = act_inference(model, x, act)
    assert out.segments.tolist() == [3, 3, 3, 3] and not out.halted_by_q.any()  # ties do not halt
    with torch.no_grad():
        model.heads.q.bias.copy_(torch.tensor([1.0, 0.0]))
    out = act_inference(model, x, act)
    assert out.segments.tolist() == [1, 1, 1, 1] and out.halted_by_q.all()
    fixed = act_inference(model, x, _act(fixed_segments=2))
    assert fixed.segments.tolist() == [2, 2, 2, 2] and not fixed.halted_by_q.any()


# ---------------------------------------------------------------- pattern dropout and draws


def test_pattern_dropout_zeroes_the_whole_mask_of_dropped_samples(prepared):
    data = prepared.train
    sample = torch.arange(6)
    drop = torch.tensor([True, False, True, False, False, True])
    x, _ = data.batch(sample, drop)
    assert (x.pattern_mask[drop] == 0).all()
    assert torch.equal(x.pattern_mask[~drop], data.inputs.pattern_mask[sample[~drop]])
    assert data.inputs.pattern_mask[sample[drop]].sum() > 0  # the source rows had patterns


def test_draws_drop_patterns_at_the_configured_rate_and_shard_the_global_batch():
    train = TrainConfig(seed=0, batch_size=64, pattern_dropout=0.25)
    act = ActConfig(max_segments=3, exploration_prob=0.1)
    rates = [draw_slots(train, act, s, 100, slice(0, 64)).drop_patterns.float().mean() for s in range(200)]
    assert abs(float(torch.stack(rates).mean()) - 0.25) < 0.02
    train = TrainConfig(seed=5, batch_size=8, pattern_dropout=0.25)
    act = ActConfig(max_segments=3, exploration_prob=0.5)
    whole = draw_slots(train, act, 7, 100, slice(0, 8))
    half = draw_slots(train, act, 7, 100, slice(4, 8))
    assert torch.equal(whole.sample[4:], half.sample) and torch.equal(whole.explore_min[4:], half.explore_min)


# ---------------------------------------------------------------- schedule, weights, failures, configs


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(f[4:], f[5:]))
    assert f[20] == pytest.approx(0.1)


def test_unknown_loss_weight_is_refused_by_name():
    cfg = _config(loss_weights={"policy": 2.0, "sharpe": 1.0})
    with pytest.raises(ConfigurationError, match="train.loss_weights.sharpe"):
        loss_weights(cfg.train)
    assert loss_weights(_config(loss_weights={"policy": 2.0}).train) == {**DEFAULT_LOSS_WEIGHTS, "policy": 2.0}


def test_non_finite_inputs_stop_training_with_a_convergence_error(prepared):
    bad = prepared.train.subset(torch.arange(32))
    bad.inputs.h_tokens[:] = float("nan")
    trainer = new_trainer(_config(), bad, CPU, total_steps=2)
    with pytest.raises(ConvergenceError, match="non-finite"):
        trainer.train_step()


@pytest.mark.parametrize("name", ["train_eurusd.yaml", "train_sp500.yaml", "train_eurusd_27m.yaml"])
def test_train_configs_load(name):
    cfg = load_config(ROOT / "config" / name)
    assert cfg.train.steps > 0 and cfg.data.dataset


def test_without_keep_best_training_still_runs_on_while_validation_improves(prepared, tmp_path):
    """Patience counts evaluations without a better validation CE, whether or not `best` is kept."""
    cfg = _config(keep_best=False, patience=1, checkpoint_every=2)
    trainer = new_trainer(cfg, prepared.train, CPU, total_steps=6)
    result = run(trainer, 6, tmp_path, inputs=prepared.inputs,
                 eval_sets=EvalSets.of(prepared.train, prepared.val, prepared.test), progress=False)
    ces = [json.loads(s)["val_cross_entropy"] for s in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if '"eval": true' in s]
    assert ces == sorted(ces, reverse=True), ces  # improving at every evaluation this early ...
    assert result.step == 6 and len(ces) == 3  # ... so nothing stopped it
    assert not (tmp_path / "best").exists() and result.best is None


def test_a_checkpoint_never_carries_a_decision_rule_fitted_for_other_weights(prepared, tmp_path):
    from dualhrq.model.decision import DecisionRule

    stale = prepared.inputs.with_rule(DecisionRule(1.0, [[0.0] * 5] * 3, 0.1, None, "an earlier run", 0.0, 0.0))
    trainer = new_trainer(_config(), prepared.train, CPU, total_steps=1)
    result = run(trainer, 1, tmp_path, inputs=stale, eval_sets=None, progress=False)
    assert InputPipeline.load(result.checkpoint, _config()).rule is None


def test_a_run_into_a_directory_of_an_older_version_trains_and_takes_over_best(prepared, tmp_path):
    cfg = _config()
    old = tmp_path / "checkpoints" / "step_0000020"
    old.mkdir(parents=True)
    (old / "checkpoint.json").write_text(json.dumps({"format_version": 1, "extra": {}}))
    (tmp_path / "best").write_text(old.name)
    trainer = new_trainer(cfg, prepared.train, CPU, total_steps=2)
    result = run(trainer, 2, tmp_path, inputs=prepared.inputs,
                 eval_sets=EvalSets.of(prepared.train, prepared.val, prepared.test), progress=False)
    assert (tmp_path / "best").read_text() == result.checkpoint.name


def test_a_resumed_train_run_is_recorded_with_the_config_it_trained_with(tmp_path):
    from subcommand import run_subcommand

    from dualhrq.evaluate.ledger import LEDGER_NAME, Ledger, config_hash
    from dualhrq.train.commands import register

    def write(name: str, lr: float) -> Path:
        path = tmp_path / name
        path.write_text(f"base: {ROOT / 'config' / 'train_eurusd.yaml'}\ntrain: {{steps: 4, batch_size: 8, lr: {lr}, "
                        "device: cpu, checkpoint_every: 2, evaluate: false}\n")
        return path

    first, edited = write("first.yaml", 1e-3), write("edited.yaml", 5e-3)
    out = tmp_path / "runs" / "run"
    assert run_subcommand(register, "train", "--config", str(first), "--out", str(out), "--stop-at", "2",
                          "--no-progress") == 0
    # --resume trains on with the checkpoint's config whatever --config now says: that config is the run's.
    assert run_subcommand(register, "train", "--config", str(edited), "--out", str(out), "--resume",
                          "--no-progress") == 0
    with Ledger(tmp_path / "runs" / LEDGER_NAME) as ledger:
        runs = ledger.runs("train")
    assert [r.metrics["step"] for r in runs] == [2, 4]
    assert {r.config_hash for r in runs} == {config_hash(load_config(first))} != {config_hash(load_config(edited))}


@pytest.mark.parametrize(("value", "expected"), [("abc", "expected an integer, got 'abc'"),
                                               ("0", "must be >= 1, got '0'"), ("-3", "must be >= 1, got '-3'")])
def test_a_count_flag_names_itself_and_what_it_expects(value, expected, capsys):
    import argparse

    from dualhrq.train.commands import register

    parser = argparse.ArgumentParser(prog="dualhrq")
    register(parser.add_subparsers(dest="command", required=True))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--config", "c.yaml", "--steps", value])
    err = capsys.readouterr().err
    assert f"argument --steps: {expected}" in err and "_positive" not in err


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    from dualhrq.train.loop import train

    taken = tmp_path / "notes.txt"
    taken.write_text("not a run")
    with pytest.raises(ConfigurationError, match="--out: .* is a file"):
        train(load_config(ROOT / "config" / "train_eurusd.yaml"), out_dir=taken, progress=False)
    assert taken.read_text() == "not a run"


@pytest.mark.parametrize("content", [b"garbage, not a pickle", None])
def test_a_train_state_that_is_not_one_is_refused_in_our_words_not_torchs(tmp_path, content):
    from dualhrq.errors import ModelLoadError

    path = tmp_path / STATE_FILE
    if content is None:
        torch.save({"step": 3}, path)  # loads, but holds no train state
    else:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="not a train state written by dualhrq train") as e:
        load_train_state(tmp_path)
    assert "weights_only" not in str(e.value)
