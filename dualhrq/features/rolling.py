"""Rolling windows over per-bar series, and the reductions and ratios the feature columns apply to them.

Training computes every row of a long history; serving computes the newest rows of the ~70 bars a request
carries, where numpy's fixed cost per call, not the arithmetic, is the price. So the feature functions take
``last`` (compute only that many trailing rows), work on per-bar series and reduce many series' windows in one
call (`stacked_windows`), and use bare ufuncs rather than the wrappers (np.diff, np.std, np.select, ...) that
spend longer checking arguments than computing on arrays this small. A window's sum is the same pairwise sum
of the same contiguous values however many rows or series are reduced with it, so every row comes out bit for
bit the same whichever rows are computed (a test holds serving to that).
"""

from __future__ import annotations

import numpy as np

from dualhrq.errors import ConfigurationError


def f64(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float64 array (no copy when it already is one): the window views read its memory."""
    return np.ascontiguousarray(x, np.float64)


def tail_rows(n: int, last: int | None) -> int:
    """How many trailing rows of an n-bar series to compute: all (None) or the last ``last``."""
    if last is None:
        return n
    if last < 1:
        raise ConfigurationError(f"last: must be >= 1 (rows to compute), got {last}")
    return min(last, n)


def stacked_windows(w: int, m: int, *series: np.ndarray) -> np.ndarray:
    """[len(series), m, w]: for each series (same length n), the window of w values ending at each of its last
    m rows, oldest first, NaN where a window reaches before the series starts. A strided view over one fresh
    buffer (never write to it), so a single reduction serves every series."""
    n = len(series[0])
    first = n - m - w + 1  # the earliest value any of the windows reads
    pad = max(-first, 0)
    buf = np.empty((len(series), pad + n - max(first, 0)))
    buf[:, :pad] = np.nan
    for row, s in zip(buf, series):
        row[pad:] = s[max(first, 0):]
    return np.ndarray((len(series), m, w), np.float64, buf, strides=(buf.strides[0], 8, 8))


def windows(x: np.ndarray, w: int, rows: int | None = None) -> np.ndarray:
    """[rows, w]: the windows of one series (see `stacked_windows`); rows default to every row."""
    return stacked_windows(w, len(x) if rows is None else rows, x)[0]


def window_sums(win: np.ndarray) -> np.ndarray:
    """Sum over the last axis (np.sum's result without its wrapper)."""
    return np.add.reduce(win, axis=-1)


def window_mean(win: np.ndarray) -> np.ndarray:
    """Mean over the last axis, computed as np.mean does (sum, then divide by the count)."""
    return np.add.reduce(win, axis=-1) / win.shape[-1]


def lag(x: np.ndarray, k: int, rows: int | None = None) -> np.ndarray:
    """The last ``rows`` values (default: all) of x shifted k places later; NaN before the series starts."""
    n = len(x)
    m = n if rows is None else rows
    lo = n - m - k  # index into x of the first row's value
    if lo >= 0:
        return x[lo:lo + m]
    out = np.full(m, np.nan)
    if m + lo > 0:
        out[-lo:] = x[:m + lo]
    return out


def with_previous(op: np.ufunc, x: np.ndarray) -> np.ndarray:
    """out[i] = op(x[i], x[i-1]), out[0] NaN, without np.diff's overhead: differences (np.subtract) and the
    adjacent products that bipower variation and autocorrelation sum (np.multiply)."""
    out = np.empty(len(x))
    out[:1] = np.nan
    op(x[1:], x[:-1], out=out[1:])
    return out


def ratio(a: np.ndarray, b: np.ndarray, fill: float) -> np.ndarray:
    """a / b for a denominator b >= 0; ``fill`` where b == 0 (a flat window); NaN where a or b is NaN."""
    zero = b == 0
    if not np.count_nonzero(zero):  # the usual case: a plain division
        return a / b
    out = np.full(np.broadcast_shapes(np.shape(a), np.shape(b)), fill)
    return np.divide(a, b, out=out, where=~zero | np.isnan(a))  # NaN / 0 is a quiet NaN: no warning


def zscore(last: np.ndarray, mean: np.ndarray, sum_sq_dev: np.ndarray, w: int) -> np.ndarray:
    """Z-score of a window's last value from its mean and its sum of squared deviations (0 for a constant
    window); the std is np.std's (population), computed the way numpy computes it."""
    return ratio(last - mean, np.sqrt(sum_sq_dev / w), 0.0)


def zscore_last(win: np.ndarray) -> np.ndarray:
    """Z-score of each window's last value within the window [..., w] (0 for a constant window)."""
    mean = window_mean(win)
    d = win - mean[..., None]
    return zscore(win[..., -1], mean, window_sums(d * d), win.shape[-1])


def known_at(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """x[idx] with NaN where idx < 0 (nothing known yet)."""
    ok = idx >= 0
    if np.count_nonzero(ok) == len(idx):
        return x[idx]
    out = np.full(idx.shape, np.nan)
    out[ok] = x[idx[ok]]
    return out
