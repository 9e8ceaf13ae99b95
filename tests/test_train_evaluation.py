"""Held-out figures that cannot hide a collapse, and the cost-aware decision rule the server applies."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
import torch

from dualhrq.model import ACTIONS
from dualhrq.model.decision import ALLOWED, HOLD, DecisionRule, fit_rule, realised_gain
from dualhrq.model.vocab import EXPOSURE_AFTER, STATE_EXPOSURE
from dualhrq.train.batches import TrainingSet
from dualhrq.train.evaluation import Interval, LabelBaselines, classification_scores, score
from dualhrq.train.losses import Targets

BUY, SELL, CLOSE_LONG, CLOSE_SHORT = (ACTIONS.index(a) for a in ("BUY", "SELL", "CLOSE_LONG", "CLOSE_SHORT"))


def _labelled(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(actions, states, forward returns) that follow the label rule: state-dependent, HOLD-heavy."""
    rng = np.random.default_rng(seed)
    state = rng.choice(3, n, p=[0.5, 0.25, 0.25])
    f = rng.normal(0, 1, n)
    action = np.full(n, HOLD)
    flat, long, short = state == 0, state == 1, state == 2
    action[flat & (f > 0.8)], action[flat & (f < -0.8)] = BUY, SELL
    action[long & (f < -0.8)], action[short & (f > 0.8)] = CLOSE_LONG, CLOSE_SHORT
    return action, state, f


def _data(action: np.ndarray, state: np.ndarray, f: np.ndarray) -> TrainingSet:
    n = len(action)
    z = torch.zeros(n)
    t = Targets(action=torch.from_numpy(action), quantity=z, out_a=torch.from_numpy(f).float(),
                out_b=torch.from_numpy(f).float(), action_return=torch.from_numpy(f).float(),
                cost=torch.full((n,), 0.1), regime=torch.zeros(n, dtype=torch.int64), state=torch.from_numpy(state))
    return TrainingSet(inputs=None, targets=t)  # type: ignore[arg-type]  # score reads targets only


def _outputs(logits: np.ndarray, forecast: np.ndarray) -> dict[str, torch.Tensor]:
    n = len(logits)
    return {"policy_logits": torch.from_numpy(logits), "forecast_fine": torch.from_numpy(forecast),
            "forecast_coarse": torch.from_numpy(forecast), "segments": torch.ones(n, dtype=torch.int64),
            "halted_by_q": torch.ones(n, dtype=torch.bool)}


def _informed_logits(action: np.ndarray, state: np.ndarray, f: np.ndarray, noise: float = 0.7) -> np.ndarray:
    """Logits of a model that sees a noisy forward return and knows the state (so it beats both baselines)."""
    seen = f + np.random.default_rng(1).normal(0, noise, len(f))
    logits = np.full((len(f), 5), -4.0)
    logits[:, HOLD] = 0.0
    flat, long, short = state == 0, state == 1, state == 2
    logits[flat, BUY], logits[flat, SELL] = 2 * seen[flat] - 1.5, -2 * seen[flat] - 1.5
    logits[long, CLOSE_LONG], logits[short, CLOSE_SHORT] = -2 * seen[long] - 1.5, 2 * seen[short] - 1.5
    return logits


def test_a_planted_input_independent_model_triggers_the_collapse_warning():
    action, state, f = _labelled()
    baselines = LabelBaselines.fit(action, state)
    constant = np.tile(np.log(baselines.frequency), (len(action), 1))  # the label frequencies, every bar
    report = score(_outputs(constant, np.zeros(len(action))), _data(action, state, f), baselines)
    assert report.input_independent
    assert any("ignores its input" in w for w in report.warnings)
    assert any("not HOLD" in w for w in report.warnings)  # its argmax is always HOLD
    assert report.cross_entropy == pytest.approx(report.frequency_ce, abs=1e-9)
    assert report.predicted["HOLD"] == len(action) and report.non_hold_share == 0.0


def test_an_informed_model_beats_both_baselines_without_a_warning():
    action, state, f = _labelled()
    baselines = LabelBaselines.fit(action, state)
    report = score(_outputs(_informed_logits(action, state, f), f), _data(action, state, f), baselines)
    assert not report.warnings
    assert report.cross_entropy < report.state_ce < report.frequency_ce
    assert report.non_hold_share > 0.05 and report.balanced_accuracy > 0.4
    assert report.position_ic.low > 0 and report.forecast_fine_ic.value == pytest.approx(1.0)


def test_state_only_baseline_is_the_per_state_label_frequency():
    action, state, f = _labelled()
    b = LabelBaselines.fit(action, state)
    _, state_ce = b.cross_entropies(action, state)
    by_hand = -np.mean([np.log((np.sum((state == s) & (action == a)) + 1) / (np.sum(state == s) + 5))
                        for a, s in zip(action, state)])
    assert state_ce == pytest.approx(by_hand)


def test_balanced_accuracy_and_macro_f1_do_not_reward_always_hold():
    labels = np.array([HOLD] * 8 + [BUY, SELL])
    accuracy, balanced, f1 = classification_scores(labels, np.full(10, HOLD))
    assert accuracy == 0.8 and balanced == pytest.approx(1 / 3)
    assert f1 == pytest.approx((2 * 8 / 18) / 3)


def test_rank_ic_interval_covers_the_value_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4000)
    y = 0.2 * x + rng.normal(size=4000)
    small, large = Interval.rank_ic(x[:200], y[:200]), Interval.rank_ic(x, y)
    assert small.low < small.value < small.high and large.low < large.value < large.high
    assert (large.high - large.low) < (small.high - small.low)
    assert math.isnan(Interval.rank_ic(np.zeros(10), y[:10]).value)


# ---------------------------------------------------------------- the decision rule


def _rule(min_edge: float | None, cost: float = 0.1) -> DecisionRule:
    returns = [[1.5, -1.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.1, -1.5, 0.0], [0.0, 0.0, -0.1, 0.0, 1.5]]
    return DecisionRule(1.0, returns, cost, min_edge, "test", 0.0, 0.0)


def test_rule_trades_only_when_the_expected_edge_clears_the_cost():
    logits = np.log(np.array([[0.30, 0.10, 0.60, 1e-9, 1e-9],  # flat: mu = 0.3, BUY gains 0.25 over HOLD
                              [0.02, 0.02, 0.96, 1e-9, 1e-9]]))  # flat: mu = 0, nothing clears the cost
    state = np.array([0, 0])
    assert _rule(0.0).choose(logits, state).tolist() == [BUY, HOLD]
    assert _rule(3.0).choose(logits, state).tolist() == [HOLD, HOLD]  # margin 0.3 > 0.25
    assert _rule(None).choose(logits, state).tolist() == [HOLD, HOLD]


def test_rule_gains_are_the_calibrated_expected_return_net_of_the_exposure_change():
    """The compiled gains against the rule's formula in plain numpy, on random logits in every state."""
    rng = np.random.default_rng(0)
    rule = msgspec.structs.replace(_rule(0.2), temperature=1.7)
    logits, state = rng.normal(size=(64, 5)) * 3, rng.integers(0, 3, 64)
    z = np.exp(logits / 1.7 - (logits / 1.7).max(axis=1, keepdims=True))
    mu = (z / z.sum(axis=1, keepdims=True) * np.asarray(rule.class_returns)[state]).sum(axis=1)
    after, before = np.asarray(EXPOSURE_AFTER)[state], np.asarray(STATE_EXPOSURE)[state]
    want = after * mu[:, None] - np.abs(after - before[:, None]) * rule.cost / 2
    allowed = np.array([[a in ALLOWED[s] for a in range(5)] for s in state])
    gains = rule.gains(logits, state)
    np.testing.assert_allclose(gains[allowed], want[allowed], rtol=1e-12, atol=1e-15)
    assert np.isneginf(gains[~allowed]).all()
    best = np.where(allowed, gains, -np.inf).argmax(axis=1)
    edge = gains[np.arange(64), best] - gains[:, HOLD]
    assert rule.choose(logits, state).tolist() == np.where(edge > rule.margin, best, HOLD).tolist()
    # the server's one-row call decides as the batch does
    assert [rule.choose_row(row, int(s)) for row, s in zip(logits, state)] == rule.choose(logits, state).tolist()


def test_rule_refuses_logits_or_states_of_the_wrong_shape_or_range():
    with pytest.raises(ValueError, match="logits"):
        _rule(0.0).choose(np.zeros((2, 4)), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="states: must be in 0..2"):
        _rule(0.0).choose(np.zeros((2, 5)), np.array([0, 3]))
    with pytest.raises(ValueError, match="logits"):
        _rule(0.0).choose_row(np.zeros(4), 0)
    with pytest.raises(ValueError, match="state: must be in 0..2"):
        _rule(0.0).choose_row(np.zeros(5), -1)


def test_rule_only_takes_the_actions_the_position_state_allows():
    down = np.log(np.array([[1e-9, 0.9, 0.1 - 2e-9, 1e-9, 1e-9]]))  # SELL-heavy probabilities
    # Long: the only way down is CLOSE_LONG; short: already short, so it holds.
    assert _rule(0.0).choose(down, np.array([1])).tolist() == [HOLD]  # mu comes from HOLD's 0.1 in state long
    close = np.log(np.array([[1e-9, 1e-9, 0.3, 0.7 - 3e-9, 1e-9]]))
    assert _rule(0.0).choose(close, np.array([1])).tolist() == [CLOSE_LONG]
    assert _rule(0.0).choose(close, np.array([2])).tolist() == [HOLD]  # CLOSE_LONG is not a short's action


def test_fitted_rule_picks_its_margin_on_validation_and_round_trips_through_json():
    action, state, f = _labelled(seed=2)
    val = _labelled(seed=3)
    rule = fit_rule((action, state, f), _informed_logits(*val), val, cost=0.1, fitted_on="validation slice")
    chosen = rule.choose(_informed_logits(*val), val[1])
    assert rule.validation_trade_share == pytest.approx(np.mean(chosen != HOLD))
    assert rule.validation_gain == pytest.approx(realised_gain(chosen, val[1], val[2], 0.1).mean())
    assert rule.validation_gain > 0 and rule.validation_trade_share > 0.05
    noise = np.random.default_rng(4).normal(size=(len(val[0]), 5))
    never = fit_rule((action, state, f), noise, val, cost=50.0, fitted_on="noise")
    assert never.validation_trade_share == 0.0 and never.choose(noise, val[1]).tolist() == [HOLD] * len(noise)
    for r in (rule, _rule(None)):  # "never trade" travels as null
        assert msgspec.json.decode(msgspec.json.encode(r), type=DecisionRule) == r


def test_rank_ic_interval_has_fiellers_width():
    iv = Interval.rank_ic(np.arange(103.0), np.random.default_rng(5).normal(size=103))
    z = math.atanh(iv.value)
    assert math.atanh(iv.high) - z == pytest.approx(1.96 * math.sqrt(1.06 / 100))
    assert z - math.atanh(iv.low) == pytest.approx(1.96 * math.sqrt(1.06 / 100))


def test_fitted_margin_is_the_best_of_the_grid_on_validation():
    from dualhrq.model.decision import MIN_EDGES, _decide

    train, val = _labelled(seed=6), _labelled(seed=7)
    logits = _informed_logits(*val, noise=1.5)
    rule = fit_rule(train, logits, val, cost=0.3, fitted_on="validation slice")
    gains = rule.gains(logits, val[1])
    by_edge = {e: realised_gain(_decide(gains, math.inf if e is None else e * 0.3), val[1], val[2], 0.3).mean()
               for e in MIN_EDGES}
    assert by_edge[rule.min_edge] == pytest.approx(max(by_edge.values()))
    assert rule.min_edge is None or rule.min_edge > 0  # with this much noise trading at any edge loses to a stricter margin


def test_a_rule_with_a_bad_field_is_refused_by_name():
    good = msgspec.to_builtins(_rule(0.5))
    for field, value in (("cost", -1.0), ("temperature", 0.0), ("min_edge", float("nan")),
                         ("class_returns", [[0.0] * 5] * 2)):
        with pytest.raises(msgspec.ValidationError, match=f"{field}: expected"):
            msgspec.convert({**good, field: value}, DecisionRule)
