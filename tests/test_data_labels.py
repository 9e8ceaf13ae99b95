"""Labels: forward returns, when they become known, the five action classes and the quantity target."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from dualhrq.config import DataConfig
from dualhrq.data.bars import Bars
from dualhrq.data.labels import BUY, CLOSE_LONG, CLOSE_SHORT, HOLD, SELL, UNKNOWN, make_labels
from dualhrq.data.synthetic import random_bars
from dualhrq.errors import ConfigurationError
from dualhrq.features import BAR_WINDOW
from dualhrq.model.vocab import ACTIONS

HOUR = 3600 * 10**9
DAY = 24 * HOUR


def _bars_from_closes(c: np.ndarray) -> Bars:
    o = np.concatenate([[c[0]], c[:-1]])
    t = HOUR * np.arange(1, len(c) + 1, dtype=np.int64)
    return Bars(t, o, np.maximum(o, c), np.minimum(o, c), c, np.ones(len(c))).validate()


def test_action_classes_follow_the_wire_order():
    assert [ACTIONS[a] for a in (BUY, SELL, HOLD, CLOSE_LONG, CLOSE_SHORT)] == list(ACTIONS)
    assert ACTIONS == ("BUY", "SELL", "HOLD", "CLOSE_LONG", "CLOSE_SHORT")


def test_forward_returns_and_the_time_they_become_known():
    fine = random_bars(24 * 4)
    lab = make_labels(fine, DAY, DataConfig(label_horizon=2, cost_bps=1.0, action_vol_threshold=0.5))
    lc = np.log(fine.c)
    i = 30
    assert lab.out_b[i] == pytest.approx(lc[i + 2] - lc[i])
    assert lab.out_a[i] == pytest.approx(lc[i + 24] - lc[i])  # hourly bars: one day ahead is 24 bars on
    assert lab.t_known[i] == fine.t[i + 24]
    assert lab.valid[: BAR_WINDOW + 2].sum() == 0 and not lab.valid[-24:].any()  # no history / no future
    assert (lab.action[~lab.valid] == UNKNOWN).all() and np.isnan(lab.out_a[~lab.valid]).all()


def test_coarse_label_skips_a_gap_to_the_first_bar_a_period_later():
    fine = random_bars(24 * 4)
    gapped = Bars(np.where(np.arange(len(fine)) >= 40, fine.t + 2 * DAY, fine.t), fine.o, fine.h, fine.l,
                  fine.c, fine.v)  # a weekend-like gap after bar 39
    lab = make_labels(gapped, DAY, DataConfig(label_horizon=1, cost_bps=1.0, action_vol_threshold=0.5))
    assert lab.t_known[30] == gapped.t[40]  # the first bar at least a day later is just after the gap
    assert lab.out_a[30] == pytest.approx(np.log(gapped.c[40] / gapped.c[30]))


def test_each_action_follows_from_the_trailing_and_forward_moves():
    # Flat history (volatility 0, so the threshold is the cost alone), then hand-made 1% moves.
    moves = [0, 0.01, 0.01, -0.01, 0, -0.01, 0.01, 0.01, 0, 0, 0]
    c = 100 * np.exp(np.concatenate([np.zeros(BAR_WINDOW + 2), np.cumsum(moves)]))
    lab = make_labels(_bars_from_closes(c), 3 * HOUR, DataConfig(label_horizon=1, cost_bps=1.0,
                                                                action_vol_threshold=0.0))
    start = BAR_WINDOW + 2  # the bar before the first move: trailing 0, forward +1%
    expect = [BUY,  # flat, next +1%
              HOLD,  # long (+1% behind), next +1%: keep it
              CLOSE_LONG,  # long, next -1%
              HOLD,  # short (-1% behind), next 0
              SELL,  # flat, next -1%
              CLOSE_SHORT,  # short, next +1%
              HOLD,  # long, next +1%
              HOLD]  # long, next 0
    assert lab.action[start : start + len(expect)].tolist() == expect


def test_quantity_is_zero_inside_the_cost_and_grows_with_the_move():
    fine = random_bars(500, seed=3)
    lab = make_labels(fine, DAY, DataConfig(label_horizon=1, cost_bps=5.0, action_vol_threshold=0.5))
    q, f = lab.quantity[lab.valid], np.abs(lab.out_b[lab.valid])
    assert ((q >= 0) & (q < 1)).all()
    assert (q[f <= 5e-4] == 0).all() and (q[f > 5e-4] > 0).all()
    order = np.argsort(f)
    assert np.corrcoef(f[order], q[order])[0, 1] > 0.8


def test_a_higher_volatility_threshold_asks_for_fewer_actions():
    fine = random_bars(600, seed=4)
    active = [np.isin(make_labels(fine, DAY, DataConfig(action_vol_threshold=k)).action,
                      [BUY, SELL, CLOSE_LONG, CLOSE_SHORT]).sum()
              for k in (0.0, 0.5, 1.0, 2.0)]
    assert active == sorted(active, reverse=True) and active[-1] < active[0] / 2


@pytest.mark.parametrize("field, value", [("label_horizon", 0), ("cost_bps", -1.0), ("action_vol_threshold", -0.1)])
def test_bad_label_settings_are_refused_by_name(field, value):
    with pytest.raises(ConfigurationError, match=f"data.{field}"):
        make_labels(random_bars(50), DAY, msgspec.structs.replace(DataConfig(), **{field: value}))
