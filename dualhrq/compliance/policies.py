"""Built-in signal sources for `dualhrq replay` without a model bundle: they exercise the gate, not the market.

Momentum follows the sign of the close-to-close move over ``lookback`` bars, so it sells into crashes
(short sales under SSR) and keeps buying into rallies (risk limits). Random draws every action with a
seeded generator, so the property "no violation" is tried on actions a trained model would rarely emit.
"""

from __future__ import annotations

import numpy as np

from dualhrq.compliance.replay import SignalFn
from dualhrq.data.bars import Bars
from dualhrq.errors import ConfigurationError
from dualhrq.model.vocab import ACTIONS

POLICIES = ("momentum", "random")


def momentum_policy(bars: Bars, lookback: int = 5, quantity: float = 1.0) -> SignalFn:
    if lookback < 1:
        raise ConfigurationError(f"lookback: expected >= 1, got {lookback}")
    close = bars.c

    def signal(i: int) -> tuple[str, float]:
        if i < lookback or close[i] == close[i - lookback]:
            return "HOLD", 0.0
        return ("BUY" if close[i] > close[i - lookback] else "SELL"), quantity

    return signal


def random_policy(bars: Bars, seed: int = 0, max_quantity: float = 1.0) -> SignalFn:
    rng = np.random.default_rng(seed)
    actions = rng.integers(0, len(ACTIONS), size=len(bars))
    quantities = rng.uniform(0.0, max_quantity, size=len(bars))

    def signal(i: int) -> tuple[str, float]:
        return ACTIONS[int(actions[i])], float(quantities[i])

    return signal


def policy(name: str, bars: Bars, seed: int = 0) -> SignalFn:
    """A built-in signal source by name (see POLICIES)."""
    if name == "momentum":
        return momentum_policy(bars)
    if name == "random":
        return random_policy(bars, seed)
    raise ConfigurationError(f"policy: expected one of {', '.join(POLICIES)}, got {name!r}")
