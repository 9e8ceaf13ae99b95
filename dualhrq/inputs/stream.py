"""One stream's window: the bars an `append` session has sent, and the tokens already computed from them.

A stream starts from a full window (a `signal` that names a session) and each `append` adds the newest bars.
Only the token rows of the new bars are computed, through the same `SampleBuilder` steps as a full window; since
every feature row is a function of a fixed number of bars ending at it, the sample comes out bit for bit the one
the full window of the stream's bars would give (a property test over random splits of real series holds it to
that). Nothing here knows of the wire: the runtime keeps the streams and turns `Resync` into its error reply.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.windows import Sample, SampleBars, SampleBuilder
from dualhrq.errors import DataError


class Resync(DataError):
    """These bars cannot extend the stream (a bar missing, or not newer than the stream's last): the caller must
    send the whole window again."""


def _joined(a: Bars, b: Bars) -> Bars:
    return Bars(*(np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in fields(Bars)))


class StreamWindow:
    """The last ``needs`` bars of a stream, the coarse bars it sent that have not closed yet, and the tokens of the
    sample at its last fine bar. ``fine_ns``: the fine timeframe; ``closure_ns``: the shortest spacing between two
    fine bars that is a market closure rather than a missing bar."""

    def __init__(self, builder: SampleBuilder, fine_ns: int, closure_ns: int, bars: SampleBars, sample: Sample,
                 pending: Bars) -> None:
        """From a full window: its bars, the sample built from them, and the coarse bars it carried that close
        after its last fine bar (``pending``: they count once a later fine bar passes them)."""
        self.builder, self.fine_ns, self.closure_ns = builder, fine_ns, closure_ns
        self._fine = bars.fine
        self._coarse = _joined(bars.coarse, pending)
        self._visible = len(bars.coarse)  # of self._coarse, those closed by the last fine bar
        self._h, self._l, self._state = sample.h_tokens, sample.l_tokens, sample.state
        self.bars = bars

    @property
    def last_t(self) -> int:
        return int(self._fine.t[-1])

    @property
    def nbytes(self) -> int:
        """Memory held by the window's arrays (bars and tokens)."""
        held = (self._fine, self._coarse)
        return sum(getattr(b, f.name).nbytes for b in held for f in fields(Bars)) + self._h.nbytes + self._l.nbytes

    def extend(self, coarse: Bars, fine: Bars) -> SampleBars:
        """Add validated new bars (``fine`` at least one) and return the bars of the sample at the newest one;
        ``sample`` then builds it. Raises Resync, leaving the stream as it was, when they do not follow on."""
        self._check_follows(coarse, fine)
        n_coarse, n_fine = self.builder.needs
        t_h, t_l = self.builder.model.coarse_len, self.builder.model.fine_len
        as_of = int(fine.t[-1])
        joined = _joined(self._fine, fine)
        fine_w = joined.slice(len(joined) - n_fine)
        every_coarse = _joined(self._coarse, coarse) if len(coarse) else self._coarse
        visible = int(np.searchsorted(every_coarse.t, as_of, side="right"))
        coarse_w = every_coarse.slice(visible - n_coarse, visible)

        k = len(fine)
        rows, state = self.builder.fine_tokens(fine_w, min(k, t_l))
        l_tokens = rows if k >= t_l else np.concatenate([self._l[k:], rows])
        closed = visible - self._visible  # coarse bars that closed with these fine bars
        h_tokens = self._h
        if closed:
            rows = self.builder.coarse_tokens(coarse_w, min(closed, t_h))
            h_tokens = rows if closed >= t_h else np.concatenate([self._h[closed:], rows])

        self._fine = fine_w
        self._coarse = every_coarse.slice(visible - n_coarse)
        self._visible = n_coarse
        self._h, self._l, self._state = h_tokens, l_tokens, state
        self.bars = SampleBars(coarse_w, fine_w, as_of)
        return self.bars

    def sample(self, pattern: np.ndarray | None = None) -> Sample:
        """The sample at the stream's newest fine bar; ``pattern``: its retrieval key when already computed."""
        return self.builder.assemble(self.bars, self._h, self._l, self._state, pattern)

    def _check_follows(self, coarse: Bars, fine: Bars) -> None:
        if len(fine) == 0:
            raise DataError("fine: an append carries at least one new fine bar")
        spacing = np.diff(np.concatenate([self._fine.t[-1:], fine.t]))
        stale = np.flatnonzero(spacing <= 0)
        if len(stale):
            i = int(stale[0])
            raise Resync(f"fine.t[{i}]: {int(fine.t[i])} is not newer than the stream's last bar "
                         f"({int(self._fine.t[-1]) if i == 0 else int(fine.t[i - 1])})")
        missing = np.flatnonzero((spacing != self.fine_ns) & (spacing < self.closure_ns))
        if len(missing):
            i = int(missing[0])
            raise Resync(f"fine.t[{i}]: {int(spacing[i]) / self.fine_ns:g} bars after the previous bar, but a "
                         f"market closure is at least {self.closure_ns / self.fine_ns:g}: a bar is missing")
        if len(coarse) and len(self._coarse) and coarse.t[0] <= self._coarse.t[-1]:
            raise Resync(f"coarse.t[0]: {int(coarse.t[0])} is not newer than the stream's last coarse bar "
                         f"({int(self._coarse.t[-1])})")
