"""Offline signals from a bundle for `dualhrq replay`: the serving path (features -> retrieval -> engine ->
ACT) on historical bars, bar by bar, without a server."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dualhrq.data.bars import Bars
from dualhrq.data.resample import resample, timeframe_name
from dualhrq.errors import DataError
from dualhrq.model.vocab import replay_instrument
from dualhrq.runtime.host import load_host

log = logging.getLogger(__name__)

RETRIEVAL_TIMEOUT_S = 5.0  # offline: wait for the index (a replay must not depend on this machine's load)


class RequestWindows:
    """The bars a request at the close of fine bar i carries, cut from a history: the last ``needs[1]`` fine bars
    up to i, and the last ``needs[0]`` coarse bars closed by then, resampled from the history with
    ``coarse_rule`` (the served model's). The one definition of a request's window: replays and the benchmarks
    cut here."""

    def __init__(self, bars: Bars, coarse_rule: str, needs: tuple[int, int]) -> None:
        self.bars, self.coarse = bars, resample(bars, coarse_rule)
        self.coarse_n, self.fine_n = needs
        self._closed = np.searchsorted(self.coarse.t, bars.t, side="right")  # coarse bars closed at each fine bar
        # Both counts only grow with i, so every bar from the first with a whole window on has one.
        self.first = min(len(bars), max(self.fine_n - 1, int(np.searchsorted(self._closed, self.coarse_n))))

    def at(self, i: int) -> tuple[Bars, Bars] | None:
        """(coarse, fine) for bar i; None while the history before it is too short for the model (i < first)."""
        self._check(i)
        if i < self.first:
            return None
        k = int(self._closed[i])
        return self.coarse.slice(k - self.coarse_n, k), self.bars.slice(i + 1 - self.fine_n, i + 1)

    def new_at(self, i: int) -> tuple[Bars, Bars]:
        """(coarse, fine) of a stream's append at the close of bar i: the coarse bars that closed since bar i - 1,
        and bar i."""
        self._check(i)
        if i == 0:
            raise DataError("bar 0 has no bar before it to append to")
        return self.coarse.slice(int(self._closed[i - 1]), int(self._closed[i])), self.bars.slice(i, i + 1)

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self.bars):
            raise DataError(f"bar {i} is outside the {len(self.bars)} bars given")


def signal_fn_from_bundle(bundle_path: str | Path, bars: Bars, instrument: str | None = None,
                          timeframe: str | None = None) -> Callable[[int], tuple[str, float]]:
    """i -> (action, quantity) decided at the close of fine bar i from the bars up to it, as `serve` would.

    Bars without enough history before them give ("HOLD", 0.0). The coarse bars are resampled from `bars`
    with the bundle's coarse rule (closed periods only). `instrument`: the bars' own; the model decides as it
    when trained on it, else as its only instrument, else as the shared "unknown" one (`replay_instrument`);
    `timeframe` defaults to the bars' own spacing, which must be the one the bundle was trained on.
    """
    if len(bars) < 2:
        raise DataError(f"bars: {len(bars)} bars; a replay needs a history")
    host = load_host(bundle_path)
    vocab = host.inputs.artifacts.instruments
    name = replay_instrument(vocab, instrument)
    tf = timeframe or timeframe_name(int(np.median(np.diff(bars.t))))
    trained = host.inputs.artifacts.timeframe
    if tf.lower() != trained.lower():
        raise DataError(f"timeframe: the bars are {tf} bars, but {bundle_path} was trained on {trained} bars")
    coarse_rule = host.inputs.artifacts.coarse_rule
    windows = RequestWindows(bars, coarse_rule, host.needs)
    log.info("replay signals from %s: instrument %r, timeframe %s, coarse %s", host.name, name, tf, coarse_rule)

    def signal(i: int) -> tuple[str, float]:
        window = windows.at(i)
        if window is None:
            return "HOLD", 0.0
        prepared = host.prepare_bars(*window, name, tf)
        context, mask = host.pattern_inputs(prepared, RETRIEVAL_TIMEOUT_S)
        result = host.batcher.run_here({**prepared.inputs, "pattern_context": context, "pattern_mask": mask})
        decision = host.decide({k: v[0] for k, v in result.outputs.items()}, prepared.state)
        return decision.action, decision.quantity

    return signal
