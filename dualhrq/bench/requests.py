"""Signal requests built from real data windows, as an order gateway would send them (PROTOCOL.md v1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.resample import default_coarse_rule, resample
from dualhrq.data.sources import load_dataset
from dualhrq.errors import DataError


def bars_to_wire(bars: Bars) -> dict[str, list]:
    return {"t": bars.t.tolist(), "o": bars.o.tolist(), "h": bars.h.tolist(), "l": bars.l.tolist(),
            "c": bars.c.tolist(), "v": bars.v.tolist()}


@dataclass(frozen=True)
class RealWindows:
    """Request-sized (coarse, fine) windows of one bundled dataset, each as of some fine bar's close."""

    instrument: str
    timeframe: str
    windows: list[tuple[Bars, Bars]]

    @classmethod
    def from_dataset(cls, name: str, needs: dict[str, int], pool: int = 64, seed: int = 0,
                     from_ns: int | None = None) -> RealWindows:
        """`pool` windows at random fine bars (without replacement), each holding `needs["coarse"]` closed
        coarse bars and `needs["fine"]` fine bars, as a gateway would send them; with ``from_ns`` only windows
        ending at or after that time (e.g. the first held-out sample's)."""
        ds = load_dataset(name)
        fine = ds.bars
        coarse = resample(fine, default_coarse_rule(ds.timeframe))
        n_c, n_f = int(needs["coarse"]), int(needs["fine"])
        visible = np.searchsorted(coarse.t, fine.t, side="right")  # coarse bars known at each fine bar
        i = np.arange(len(fine))
        late = np.ones(len(fine), bool) if from_ns is None else fine.t >= from_ns
        ends = np.flatnonzero((visible >= n_c) & (i >= n_f - 1) & late)
        if len(ends) == 0:
            raise DataError(f"{name}: too short for requests needing {n_c} coarse and {n_f} fine bars")
        rng = np.random.default_rng(seed)
        windows = []
        for i in rng.choice(ends, size=min(pool, len(ends)), replace=False):
            k = int(visible[i])
            windows.append((coarse.slice(k - n_c, k), fine.slice(i - n_f + 1, i + 1)))
        return cls(ds.instrument, ds.timeframe, windows)


@dataclass
class SignalRequestFactory:
    """`factory(i, id)` -> the i-th request body (a dict), cycling through `pool` distinct real windows."""

    instrument: str
    timeframe: str
    windows: list[tuple[dict, dict]]  # (coarse, fine) in wire form

    @classmethod
    def from_dataset(cls, name: str, needs: dict[str, int], pool: int = 64, seed: int = 0) -> SignalRequestFactory:
        real = RealWindows.from_dataset(name, needs, pool, seed)
        return cls(real.instrument, real.timeframe,
                   [(bars_to_wire(coarse), bars_to_wire(fine)) for coarse, fine in real.windows])

    def __call__(self, i: int, request_id: str) -> dict:
        coarse, fine = self.windows[i % len(self.windows)]
        return {"type": "signal", "id": request_id, "v": 1, "instrument": self.instrument,
                "timeframe": self.timeframe, "coarse": coarse, "fine": fine}


@dataclass
class SessionRequestFactory:
    """One stream of consecutive real bars: `opener` is the full-window signal that opens session ``session``,
    `factory(i, id)` the append of the i-th bar after it (with the coarse bars that closed by then)."""

    instrument: str
    timeframe: str
    session: str
    opening: tuple[dict, dict]  # (coarse, fine) in wire form
    appends: list[tuple[dict, dict]]  # (newly closed coarse bars, the one new fine bar) in wire form

    @classmethod
    def from_dataset(cls, name: str, needs: dict[str, int], n: int, session: str, seed: int = 0
                     ) -> SessionRequestFactory:
        """A stream of ``n`` appends from a random start in the dataset (every fine bar after it, in order)."""
        ds = load_dataset(name)
        fine = ds.bars
        coarse = resample(fine, default_coarse_rule(ds.timeframe))
        n_c, n_f = int(needs["coarse"]), int(needs["fine"])
        visible = np.searchsorted(coarse.t, fine.t, side="right")
        starts = np.flatnonzero((visible >= n_c) & (np.arange(len(fine)) >= n_f - 1))
        starts = starts[starts + n < len(fine)]
        if len(starts) == 0:
            raise DataError(f"{name}: {len(fine)} bars; a stream of {n} appends needs {n} consecutive bars after a "
                            f"first window of {n_f} fine and {n_c} coarse bars")
        i = int(np.random.default_rng(seed).choice(starts))
        k = int(visible[i])
        opening = (bars_to_wire(coarse.slice(k - n_c, k)), bars_to_wire(fine.slice(i - n_f + 1, i + 1)))
        appends = []
        for j in range(i + 1, i + 1 + n):
            appends.append((bars_to_wire(coarse.slice(k, int(visible[j]))), bars_to_wire(fine.slice(j, j + 1))))
            k = int(visible[j])
        return cls(ds.instrument, ds.timeframe, session, opening, appends)

    def opener(self, request_id: str) -> dict:
        coarse, fine = self.opening
        return {"type": "signal", "id": request_id, "v": 1, "instrument": self.instrument,
                "timeframe": self.timeframe, "coarse": coarse, "fine": fine, "session": self.session}

    def __call__(self, i: int, request_id: str) -> dict:
        coarse, fine = self.appends[i]
        return {"type": "append", "id": request_id, "instrument": self.instrument, "session": self.session,
                "coarse": coarse, "fine": fine}
