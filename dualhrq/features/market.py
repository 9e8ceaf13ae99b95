"""US equity market rules as features: Rule 201's short-sale restriction trigger and the LULD price bands.

The thresholds come from the compliance gate's rule tables (dualhrq.data.market_rules), read vectorised, so
the model sees the same rules the gate enforces.
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.market_rules import LULD, SSR
from dualhrq.errors import DataError


def ssr_triggered(price: np.ndarray, prior_close: np.ndarray) -> np.ndarray:
    """Rule 201's trigger: a price at or below 90% of the prior close."""
    return price <= SSR.trigger_ratio * prior_close


def luld_half_width(reference: np.ndarray, prior_close: np.ndarray, tier: int = 1) -> np.ndarray:
    """Half the LULD band in price units: reference x the percentage the prior close selects (capped in
    dollars on the sub-$0.75 row), unrounded. Bars carry no clock time, so the open/close doubling is not
    applied: the feature measures the base band."""
    if tier not in (1, 2):
        raise DataError(f"tier: must be 1 or 2, got {tier}")
    high, mid, low = LULD.above_high, LULD.middle, LULD.below_low
    above, within = prior_close > LULD.high_price, prior_close >= LULD.low_price
    # Nested where: the first row that matches wins (np.select's rule, without its overhead).
    pct = np.where(above, high.tier1 if tier == 1 else high.tier2,
                   np.where(within, mid.tier1 if tier == 1 else mid.tier2, low.tier1 if tier == 1 else low.tier2))
    cap = np.where(above, high.cap or np.inf, np.where(within, mid.cap or np.inf, low.cap or np.inf))
    return np.where(np.isnan(prior_close), np.nan, np.minimum(reference * pct, cap))


def luld_band_distance(price: np.ndarray, reference: np.ndarray, prior_close: np.ndarray,
                       tier: int = 1) -> np.ndarray:
    """Distance from the price to the nearer LULD band as a fraction of the band's width: 0.5 at the
    reference, 0 on a band, negative outside it."""
    half = luld_half_width(reference, prior_close, tier)
    return (half - np.abs(price - reference)) / (2 * half)
