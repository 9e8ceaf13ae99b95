"""Signal requests built from real data windows, as an order gateway would send them (docs/PROTOCOL.md v1).

Every window is cut by runtime.signals.RequestWindows with the coarse rule of the model it is for, so a bundle
trained on another coarse timeframe than its dataset's default gets the coarse bars it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dualhrq.data.bars import Bars, Dataset
from dualhrq.data.sources import load_dataset
from dualhrq.errors import DataError, HRMError
from dualhrq.runtime.client import append_request, signal_request
from dualhrq.runtime.signals import RequestWindows


@dataclass(frozen=True)
class ModelInputs:
    """What a served model takes: bars per request (coarse, fine) and how its coarse bars are made."""

    needs: tuple[int, int]
    coarse_rule: str
    timeframe: str | None = None  # the fine bars' timeframe, where known: a dataset of another is refused

    @classmethod
    def from_pong(cls, pong: Mapping[str, Any]) -> ModelInputs:
        """From a server's pong (as a dict): the server reports all three."""
        if not pong.get("coarse_rule"):
            raise HRMError(f"the server's pong has no coarse_rule (model {pong.get('model')!r}): it cannot say how "
                           "to make the coarse bars its model was trained on")
        return cls((int(pong["needs"]["coarse"]), int(pong["needs"]["fine"])), str(pong["coarse_rule"]),
                   pong.get("timeframe") or None)


def _cut(name: str, inputs: ModelInputs) -> tuple[Dataset, RequestWindows]:
    ds = load_dataset(name, where="--dataset")
    if inputs.timeframe and ds.timeframe.lower() != inputs.timeframe.lower():
        raise DataError(f"--dataset: {name} holds {ds.timeframe} bars, but the model was trained on "
                        f"{inputs.timeframe} bars: pick a dataset of {inputs.timeframe} bars (`dualhrq data list`)")
    return ds, RequestWindows(ds.bars, inputs.coarse_rule, inputs.needs)


@dataclass(frozen=True)
class RealWindows:
    """Request-sized (coarse, fine) windows of one bundled dataset, each as of some fine bar's close."""

    instrument: str
    timeframe: str
    windows: list[tuple[Bars, Bars]]

    @classmethod
    def from_dataset(cls, name: str, inputs: ModelInputs, pool: int = 64, seed: int = 0,
                     from_ns: int | None = None) -> RealWindows:
        """`pool` windows at random fine bars (without replacement), as a gateway would send them; with
        ``from_ns`` only windows ending at or after that time (e.g. the first held-out sample's)."""
        ds, cut = _cut(name, inputs)
        ends = np.arange(cut.first, len(ds.bars))
        if from_ns is not None:
            ends = ends[ds.bars.t[ends] >= from_ns]
        if len(ends) == 0:
            raise DataError(f"{name}: too short for requests needing {inputs.needs[0]} coarse ({inputs.coarse_rule}) "
                            f"and {inputs.needs[1]} fine bars")
        chosen = np.random.default_rng(seed).choice(ends, size=min(pool, len(ends)), replace=False)
        return cls(ds.instrument, ds.timeframe, [cut.at(int(i)) for i in chosen])


@dataclass
class SignalRequestFactory:
    """`factory(i, id)` -> the i-th request body (a dict), cycling through `pool` distinct real windows."""

    bodies: list[dict]  # signal requests without id

    @classmethod
    def from_dataset(cls, name: str, inputs: ModelInputs, pool: int = 64, seed: int = 0) -> SignalRequestFactory:
        real = RealWindows.from_dataset(name, inputs, pool, seed)
        return cls([signal_request(real.instrument, real.timeframe, coarse, fine) for coarse, fine in real.windows])

    def __call__(self, i: int, request_id: str) -> dict:
        return {**self.bodies[i % len(self.bodies)], "id": request_id}


@dataclass
class SessionRequestFactory:
    """One stream of consecutive real bars: `opening` is the full-window signal that opens its session,
    `factory(i, id)` the append of the i-th bar after it (with the coarse bars that closed by then)."""

    opening: dict  # signal request without id
    appends: list[dict]  # append requests without id

    @classmethod
    def from_dataset(cls, name: str, inputs: ModelInputs, n: int, session: str, seed: int = 0
                     ) -> SessionRequestFactory:
        """A stream of ``n`` appends from a random start in the dataset (every fine bar after it, in order)."""
        ds, cut = _cut(name, inputs)
        starts = np.arange(cut.first, len(ds.bars) - n)
        if len(starts) == 0:
            raise DataError(f"{name}: {len(ds.bars)} bars; a stream of {n} appends needs {n} consecutive bars after a "
                            f"first window of {inputs.needs[1]} fine and {inputs.needs[0]} coarse bars")
        i = int(np.random.default_rng(seed).choice(starts))
        opening = signal_request(ds.instrument, ds.timeframe, *cut.at(i), session=session)
        return cls(opening, [append_request(ds.instrument, session, *cut.new_at(j)) for j in range(i + 1, i + 1 + n)])

    def __call__(self, i: int, request_id: str) -> dict:
        return {**self.appends[i], "id": request_id}
