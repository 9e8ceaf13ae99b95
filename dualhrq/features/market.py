"""US equity market rules as features: the LULD price bands.

The thresholds come from the compliance gate's rule tables (dualhrq.data.market_rules), so the model sees
the same rules the gate enforces. The regime kernel reads the same table (`luld_table`) row by row, and
Rule 201's short-sale trigger from the same tables (`SSR.trigger_ratio`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dualhrq.data.market_rules import LULD
from dualhrq.errors import DataError
from dualhrq.features import kernels


def luld_table(tier: int = 1) -> np.ndarray:
    """The LULD band table of one tier as the kernels read it (kernels.LULD_TABLE_WIDTH values): the two price
    limits, then the percentage and dollar cap (inf: none) of the rows above, between and below them. Bars
    carry no clock time, so the open/close doubling is not applied: the features measure the base band."""
    if tier not in (1, 2):
        raise DataError(f"tier: must be 1 or 2, got {tier}")
    rows = (LULD.above_high, LULD.middle, LULD.below_low)
    pct = [row.tier1 if tier == 1 else row.tier2 for row in rows]
    cap = [np.inf if row.cap is None else row.cap for row in rows]
    return np.array([LULD.high_price, LULD.low_price, *pct, *cap], np.float64)


def _rows(kernel: Callable[..., None], tier: int, *columns: np.ndarray) -> np.ndarray:
    """A row kernel over broadcast columns (numpy arrays of any shape, 0-d included)."""
    cols = np.broadcast_arrays(*(np.asarray(c, np.float64) for c in columns))
    out = np.empty(cols[0].size)
    kernel(*(np.ascontiguousarray(c).ravel() for c in cols), luld_table(tier), out)
    return out.reshape(cols[0].shape)


def luld_half_width(reference: np.ndarray, prior_close: np.ndarray, tier: int = 1) -> np.ndarray:
    """Half the LULD band in price units: reference x the percentage the prior close selects (capped in
    dollars on the sub-$0.75 row), unrounded; NaN without a prior close."""
    return _rows(kernels.luld_half_width_rows, tier, reference, prior_close)


def luld_band_distance(price: np.ndarray, reference: np.ndarray, prior_close: np.ndarray,
                       tier: int = 1) -> np.ndarray:
    """Distance from the price to the nearer LULD band as a fraction of the band's width: 0.5 at the
    reference, 0 on a band, negative outside it."""
    return _rows(kernels.luld_band_distance_rows, tier, price, reference, prior_close)
