"""Synthetic OHLCV bars for tests and smoke runs: a seeded geometric random walk, valid by construction.

Real data lives in `dualhrq.data.sources`; this is for tests that need exact control (lengths, gaps,
planted moves) and for the runtime's tests that must not depend on the bundled packages.
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.resample import parse_rule
from dualhrq.errors import ConfigurationError

START_NS = 1_499_990_400 * 10**9  # 2017-07-14 00:00 UTC: a fixed midnight, so bar k*24 closes day k exactly


def random_bars(n: int, timeframe: str = "1h", seed: int = 0, vol: float = 0.002, price: float = 100.0,
                start_ns: int = START_NS) -> Bars:
    """``n`` contiguous bars of ``timeframe`` (close-stamped, no gaps), log returns ~ N(0, vol^2)."""
    if n < 1:
        raise ConfigurationError(f"n: must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    step = parse_rule(timeframe).ns
    c = price * np.exp(np.cumsum(rng.normal(0.0, vol, n)))
    o = np.concatenate([[price], c[:-1]])
    wick = np.abs(rng.normal(0.0, vol / 2, (2, n)))
    h = np.maximum(o, c) * np.exp(wick[0])
    l = np.minimum(o, c) * np.exp(-wick[1])  # noqa: E741
    v = rng.integers(0, 5000, n).astype(np.float64)
    return Bars(start_ns + step * np.arange(1, n + 1, dtype=np.int64), o, h, l, c, v).validate()
