"""One stream's window: the bars an `append` session has sent, and the tokens already computed from them.

A stream starts from a full window (a `signal` that names a session) and each `append` adds the newest bars.
Only the token rows of the new bars are computed, through the same `SampleBuilder` steps as a full window; since
every feature row is a function of a fixed number of bars ending at it, the sample comes out bit for bit the one
the full window of the stream's bars would give (a property test over random splits of real series holds it to
that). Nothing here knows of the wire: the runtime keeps the streams and turns `Resync` into its error reply.
"""

from __future__ import annotations

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.windows import Sample, SampleBars, SampleBuilder, check_complete
from dualhrq.errors import DataError


class Resync(DataError):
    """These bars cannot extend the stream (a bar missing, or not newer than the stream's last): the caller must
    send the whole window again."""


def _joined(a: Bars, b: Bars) -> Bars:
    return Bars(*(np.concatenate([x, y]) for x, y in zip(a.columns, b.columns)))


def _own(b: Bars) -> Bars:
    """A copy of the columns: a request's trimmed bars are views that would keep its whole arrays alive."""
    return Bars(*(x.copy() for x in b.columns))


class StreamWindow:
    """The last ``needs`` bars of a stream and the tokens of the sample at its last fine bar. ``fine_ns``: the fine timeframe; ``closure_ns``: the shortest spacing between two
    fine bars that is a market closure rather than a missing bar."""

    def __init__(self, builder: SampleBuilder, fine_ns: int, closure_ns: int, bars: SampleBars,
                 sample: Sample) -> None:
        """From a full window: its bars (all closed by its last fine bar) and the sample built from them."""
        self.builder, self.fine_ns, self.closure_ns = builder, fine_ns, closure_ns
        self._needs = builder.needs
        self._fine, self._coarse = _own(bars.fine), _own(bars.coarse)
        # No coarse bars, what an append that closed none carries: arrays of its own, not a view that would keep
        # the first window's columns alive.
        self.no_coarse = Bars(*(np.empty(0, x.dtype) for x in self._coarse.columns))
        self._h, self._l, self._state = sample.h_tokens, sample.l_tokens, sample.state
        self._new_fine = self._closed = 0  # bars added since the tokens were last computed
        self.bars = SampleBars(self._coarse, self._fine, bars.as_of)  # its own copies, not the request's views

    @property
    def nbytes(self) -> int:
        """Memory held by the window's arrays (bars and tokens)."""
        held = (self._fine, self._coarse)
        return sum(x.nbytes for b in held for x in b.columns) + self._h.nbytes + self._l.nbytes

    def extend(self, coarse: Bars, fine: Bars) -> SampleBars:
        """Add validated new bars (``fine`` at least one; ``coarse`` all closed by its last bar, which the caller
        checks) and return the bars of the sample at the newest one; `sample` then computes the new bars'
        tokens. Raises Resync, leaving the stream as it was, when they do not follow on."""
        self._check_follows(coarse, fine)
        n_coarse, n_fine = self._needs
        joined = _joined(self._fine, fine)
        self._fine = joined.slice(len(joined) - n_fine)
        self._new_fine += len(fine)
        if len(coarse):  # the stream keeps its n_coarse newest coarse bars
            every_coarse = _joined(self._coarse, coarse)
            self._coarse = every_coarse.slice(len(every_coarse) - n_coarse)
            self._closed += len(coarse)
        self.bars = SampleBars(self._coarse, self._fine, int(fine.t[-1]))
        return self.bars

    def sample(self) -> Sample:
        """The sample at the stream's newest fine bar, computing the tokens of the bars added since the last
        call (with its regime row and retrieval key, in one compiled call)."""
        t_h, t_l = self.builder.model.coarse_len, self.builder.model.fine_len
        bars, k, closed = self.bars, self._new_fine, self._closed
        if not k:  # nothing new since the last call (an append adds fine bars, and with them any coarse ones)
            return self.builder.assemble(bars, self._h, self._l, self._state)
        h = self._h
        if closed:
            rows = self.builder.coarse_tokens(bars.coarse, min(closed, t_h))
            check_complete("coarse", rows)
            h = rows if closed >= t_h else np.concatenate([h[closed:], rows])
        rows, state, regime, pattern = self.builder.newest(bars, min(k, t_l))
        # Only now, every row computed: an error above leaves the stream as it was.
        self._h, self._state = h, state
        self._l = rows if k >= t_l else np.concatenate([self._l[k:], rows])
        self._new_fine = self._closed = 0
        return Sample(self._h, self._l, regime, pattern, bars.as_of, state)

    def _check_follows(self, coarse: Bars, fine: Bars) -> None:
        if len(fine) == 0:
            raise DataError("fine: an append carries at least one new fine bar")
        previous = int(self._fine.t[-1])
        for i, t in enumerate(fine.t.tolist()):  # an append carries a bar or a few: plain ints beat numpy calls
            spacing = t - previous
            if spacing <= 0:
                raise Resync(f"fine.t[{i}]: {t} is not newer than the stream's last bar ({previous})")
            if spacing != self.fine_ns and spacing < self.closure_ns:
                raise Resync(f"fine.t[{i}]: {spacing / self.fine_ns:g} bars after the previous bar, but a "
                             f"market closure is at least {self.closure_ns / self.fine_ns:g}: a bar is missing")
            previous = t
        if len(coarse) and len(self._coarse) and coarse.t[0] <= self._coarse.t[-1]:
            raise Resync(f"coarse.t[0]: {int(coarse.t[0])} is not newer than the stream's last coarse bar "
                         f"({int(self._coarse.t[-1])})")
