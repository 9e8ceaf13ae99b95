"""Replay signals from a bundle: the serving path offline, bar by bar."""

from __future__ import annotations

import pytest
from runtime_fixtures import eurusd_history, tiny_bundle  # noqa: F401

from dualhrq.data.bars import Bars
from dualhrq.errors import DataError
from dualhrq.model.vocab import ACTIONS
from dualhrq.runtime.signals import signal_fn_from_bundle


@pytest.fixture(scope="module")
def history():
    return eurusd_history(end=-50, bars=1500)


def test_bars_without_enough_history_hold(tiny_bundle, history):
    signal = signal_fn_from_bundle(tiny_bundle, history)
    assert signal(0) == ("HOLD", 0.0) and signal(30) == ("HOLD", 0.0)


def test_a_signal_is_what_the_python_api_decides_on_the_same_bars(tiny_bundle, history):
    from dualhrq.api import HRMPolicy

    signal = signal_fn_from_bundle(tiny_bundle, history)
    policy = HRMPolicy.from_checkpoint(tiny_bundle.parent / "ckpt")
    for i in (len(history) - 1, len(history) - 200):
        action, quantity = signal(i)
        want = policy.decide(history.slice(0, i + 1), "EURUSD", "1h")
        assert action in ACTIONS
        assert (action, round(quantity, 4)) == (want.action, round(want.quantity, 4))


def test_served_actions_come_from_the_bundles_decision_rule_not_the_argmax(tiny_bundle, history):
    """The fixture's rule trades at any edge: from a long state an untrained, near-uniform policy closes."""
    from dualhrq.api import HRMPolicy

    signal = signal_fn_from_bundle(tiny_bundle, history)
    policy = HRMPolicy.from_checkpoint(tiny_bundle.parent / "ckpt")
    differs = 0
    for i in range(len(history) - 60, len(history)):
        want = policy.decide(history.slice(0, i + 1), "EURUSD", "1h")
        assert signal(i)[0] == want.action
        differs += want.action != ACTIONS[max(range(len(ACTIONS)), key=want.probs.__getitem__)]
    assert differs > 0


def test_an_index_outside_the_bars_is_an_error(tiny_bundle, history):
    with pytest.raises(DataError, match="outside"):
        signal_fn_from_bundle(tiny_bundle, history)(len(history))


def test_bars_of_another_timeframe_than_the_bundles_are_refused(tiny_bundle, history):
    daily = Bars(*(getattr(history, k)[::24] for k in "tohlcv"))
    with pytest.raises(DataError, match="timeframe: the bars are 1d bars, but .* trained on 1h bars"):
        signal_fn_from_bundle(tiny_bundle, daily)
