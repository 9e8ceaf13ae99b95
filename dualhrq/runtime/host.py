"""A loaded model as the server hosts it: bundle config, input pipeline, pattern retriever, engine and batcher.

`reload` swaps one ModelHost for another. Requests hold the host they started with (`acquire`/`release`), so
the old one keeps answering them and is closed only once the last has left: no request fails in a swap.
`load_host` is the only place that knows how a bundle becomes a host: it verifies the bundle's hashes, builds
the engine, and warms every batch size the batcher can form, so the first request pays no first-run cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from dualhrq.config import Config, SessionsConfig, config_from_dict, config_to_dict
from dualhrq.data.bars import Bars
from dualhrq.data.resample import Period, first_off_period_end, parse_rule, period_end, timeframe_name
from dualhrq.data.windows import IncompleteFeatures, Sample, SampleBars
from dualhrq.errors import ConfigurationError, DataError
from dualhrq.inputs import InputPipeline
from dualhrq.inputs.stream import Resync, StreamWindow
from dualhrq.model.decision import Decision
from dualhrq.model.vocab import ACTIONS
from dualhrq.runtime.batcher import Batcher
from dualhrq.runtime.protocol import (
    PROTOCOL_VERSION,
    Append,
    ProtocolError,
    Signal,
    WireBars,
    check_bars,
    decode_request,
    encode,
    wire_bars,
)

if TYPE_CHECKING:  # the retriever (hnswlib) loads with the bundle, not with this module
    from dualhrq.patterns.retriever import Retriever

log = logging.getLogger(__name__)

FEATURES_INLINE_MAX_S = 200e-6  # features cheaper than this run on the event loop; dearer ones in a thread


@dataclass
class Prepared:
    """One request's graph inputs but the pattern context (batch axis of 1), and its retrieval key."""

    inputs: dict[str, np.ndarray]
    key: np.ndarray  # [1, F] float32
    sample: Sample

    @property
    def as_of(self) -> int:
        return int(self.sample.as_of)

    @property
    def state(self) -> int:
        """The label rule's position state (dualhrq.features.FLAT, LONG, SHORT)."""
        return int(self.sample.state)


@dataclass
class HostHooks:
    """What the server lends the batcher of every host it loads."""

    upstream: Callable[[], int] = lambda: 0  # requests still before the queue (batching hint)
    on_batch: Callable[[int, float], None] = lambda size, seconds: None


@dataclass
class ModelHost:
    name: str  # model version, as replies report it
    config: Config  # the bundle's config with the serve-time overlay applied
    inputs: InputPipeline  # bars -> graph inputs as training made them; heads -> decision
    batcher: Batcher
    retriever: Retriever | None = None  # None: regime-only
    features_inline: bool = True
    _users: int = field(default=0, init=False)
    _idle: asyncio.Event | None = field(default=None, init=False)

    @property
    def needs(self) -> tuple[int, int]:
        """Minimum (coarse, fine) bars per request."""
        return self.inputs.needs

    @cached_property
    def _fine_ns(self) -> int:
        return parse_rule(self.inputs.timeframe).ns

    @cached_property
    def _coarse_period(self) -> Period:
        return parse_rule(self.inputs.coarse_rule)

    def window(self, req: Signal) -> SampleBars:
        """A request's bars, validated once (ProtocolError naming the bad field), trimmed to what the sample
        reads. Cheap next to the features: it runs on the event loop."""
        trained = self.inputs.timeframe
        if req.timeframe.lower() != trained.lower():
            raise ProtocolError("invalid_input", f"{req.timeframe!r}, but the model was trained on {trained} bars",
                                "timeframe", req.id)
        coarse_n, fine_n = self.needs
        coarse = check_bars(req.coarse, "coarse", coarse_n, req.id)
        fine = check_bars(req.fine, "fine", fine_n, req.id)
        if int(fine.t[-1] - fine.t[-2]) != self._fine_ns:  # the common case costs one subtraction
            spacing = _spacing(int(np.median(np.diff(fine.t))))  # weekend and holiday gaps are no new
            if spacing != trained.lower():  # timeframe: judge by the median
                raise ProtocolError("invalid_input", f"the fine bars are {spacing} apart, but the model was trained "
                                    f"on {trained} bars", "fine.t", req.id)
        try:
            bars = self.inputs.window(coarse, fine, validated=True)
        except DataError as e:  # check_bars counted every bar; too few of the coarse ones have closed
            raise ProtocolError("invalid_input", str(e), "coarse", req.id) from None
        # The closed coarse bars the window reads (not a forming one, which it ignores, nor older history) are
        # made as training made them: at the ends of coarse_rule's periods, and the newest one current.
        self._check_period_ends(bars.coarse.t, req.id, coarse.t)
        self._check_current(int(bars.coarse.t[-1]), bars.fine, req.id)
        return bars

    def _check_period_ends(self, t: np.ndarray, request_id: str, sent: np.ndarray | None = None) -> None:
        """Coarse bars close at the ends of coarse_rule's periods, as `resample` stamps them: another spacing or
        clock (hourly bars sent as daily ones, daily bars stamped at an exchange's close) is refused. `sent`:
        the request's coarse times, when `t` is a part of them, for the field's index."""
        period = self._coarse_period
        i = first_off_period_end(t, period)
        if i >= 0:
            rule = self.inputs.coarse_rule
            origin = "Monday 1970-01-05" if period.anchor_ns else "1970-01-01"
            row = i if sent is None else int(np.searchsorted(sent, t[i]))
            raise ProtocolError("invalid_input", f"{_when(int(t[i]))} is not the end of a {rule} period: "
                                f"coarse bars close every {rule} from {origin} 00:00 UTC, as training made them "
                                "from the fine bars", f"coarse.t[{row}]", request_id)

    def _check_current(self, newest: int, fine: Bars, request_id: str) -> None:
        """The newest closed coarse bar is the one of the latest closed period that holds fine bars of the
        window, as training's windows have it. Older, a coarse bar is missing and the coarse context is another
        window's; a closure of any length (a weekend, a week of holidays) holds no fine bars and needs none."""
        period, as_of = self._coarse_period, int(fine.t[-1])
        current_end = period_end(as_of, period)
        if current_end == as_of:  # the newest fine bar closed its period: that coarse bar is due now
            due = as_of
        else:
            current_start = current_end - period.ns
            if newest >= current_start:  # the common case: the previous period's bar is there
                return
            last = int(np.searchsorted(fine.t, current_start, side="right")) - 1  # the last fine bar before it
            if last < 0:
                return  # every fine bar is in the forming period: nothing to compare with
            due = period_end(int(fine.t[last]), period)
        if newest < due:
            raise ProtocolError("invalid_input", f"the coarse bar closing at {_when(due)} is missing (the fine bars "
                                f"have bars in its period; the newest closed coarse bar sent closes at "
                                f"{_when(newest)}): send this window's coarse bars", "coarse.t", request_id)

    def key(self, bars: SampleBars) -> np.ndarray:
        """The retrieval key [1, F] float32 of a window, computed before the rest of the features so that
        retrieval can start first."""
        return self.inputs.key(bars)

    def prepare(self, bars: SampleBars, key: np.ndarray, instrument: str, timeframe: str) -> Prepared:
        """The graph inputs but the pattern context. Pure numpy and CPU-bound: the server runs it off the
        event loop when `warm` found it dearer than ~0.2 ms."""
        with _refused_features():
            s = self.inputs.sample(bars, key)
        return Prepared(self.inputs.graph_inputs(s, instrument, timeframe), key, s)

    # ------------------------------------------------------------ streams (append sessions)

    def open_stream(self, bars: SampleBars, prepared: Prepared, sessions: SessionsConfig) -> StreamWindow:
        """The window of the stream a signal opens, from its full window (validated and prepared). A coarse bar
        it carried that had not closed is not kept, as the full window ignores it: it counts once appended."""
        return self.inputs.stream(bars, prepared.sample, sessions.closure_bars)

    def extend(self, window: StreamWindow, req: Append) -> SampleBars:
        """An append's bars, validated (ProtocolError naming the field), added to its stream's window;
        `resync_required` when they do not follow on from it."""
        # Most appends close no coarse bar: nothing to validate when every column is empty. Not `len`, which
        # counts `t` alone: other columns with bars must still be refused as of other lengths.
        no_coarse = not any(len(column) for column in msgspec.structs.astuple(req.coarse))
        coarse = window.no_coarse if no_coarse else check_bars(req.coarse, "coarse", 0, req.id)
        fine = check_bars(req.fine, "fine", 1, req.id)
        if not no_coarse:  # every appended bar counts: each must be a closed period's
            self._check_period_ends(coarse.t, req.id)
            if coarse.t[-1] > fine.t[-1]:  # kept, a bar not closed yet would count before its period ends
                i = int(np.searchsorted(coarse.t, fine.t[-1], side="right"))
                raise ProtocolError("invalid_input", f"{_when(int(coarse.t[i]))} has not closed by the last fine bar "
                                    f"({_when(int(fine.t[-1]))}): append a coarse bar once it has closed",
                                    f"coarse.t[{i}]", req.id)
        try:
            bars = window.extend(coarse, fine)
        except Resync as e:
            raise ProtocolError("resync_required", str(e), "session", req.id) from None
        # As the same bars in a signal: refused while a coarse bar is missing. The stream has the bars, as
        # the client's copy of the window has: the append that brings the missing bar answers again.
        self._check_current(int(bars.coarse.t[-1]), bars.fine, req.id)
        return bars

    def prepare_stream(self, window: StreamWindow, instrument: str, timeframe: str) -> Prepared:
        """The graph inputs at a stream's newest bar (`extend` first) and its retrieval key: only the new bars'
        rows were computed."""
        with _refused_features():
            s = window.sample()
        return Prepared(self.inputs.graph_inputs(s, instrument, timeframe), s.pattern_features[None], s)

    def prepare_bars(self, coarse: Bars, fine: Bars, instrument: str, timeframe: str) -> Prepared:
        """Graph inputs (but the pattern context) from numpy bars, validated here (offline callers)."""
        bars = self.inputs.window(coarse, fine)
        return self.prepare(bars, self.key(bars), instrument, timeframe)

    def regime_only(self) -> tuple[np.ndarray, np.ndarray]:
        return self.inputs.regime_only()

    def pattern_inputs(self, prepared: Prepared, timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        """(pattern context, mask) for a prepared request, blocking up to `timeout_s` on the index; the
        regime-only inputs when it fails open or the bundle has no library. For offline callers (replay, the
        engine bench): the server waits for retrieval asynchronously instead."""
        if self.retriever is not None:
            found = self.retriever.retrieve(prepared.key, prepared.as_of, timeout_s)
            if not found.fail_open:
                return found.pattern_context, found.mask
        return self.regime_only()

    def decide(self, out: dict[str, np.ndarray], state: int) -> Decision:
        """One row's heads as the decision the reply reports (before the compliance gate)."""
        return self.inputs.decide(out, state)

    # ------------------------------------------------------------ lifecycle

    def warm(self, coarse: Bars, fine: Bars, rounds: int = 3) -> None:
        """Before serving: decide where features run, and run the engine at every batch size it will see."""
        req = _as_received(Signal(id="warm-up", v=PROTOCOL_VERSION, instrument="warm-up",
                                  timeframe=self.inputs.timeframe, coarse=wire_bars(coarse), fine=wire_bars(fine)))
        bars = self.window(req)
        timings = []
        for _ in range(5):  # what runs inline or in a thread: the features, not the validation
            t = time.perf_counter()
            prepared = self.prepare(bars, self.key(bars), req.instrument, req.timeframe)
            timings.append(time.perf_counter() - t)
        self.features_inline = float(np.median(timings)) <= FEATURES_INLINE_MAX_S
        self._warm_stream(bars, prepared, fine)
        if self.retriever is not None:  # the index's first query pays for page faults (and a worker's start-up)
            for _ in range(rounds):
                self.retriever.retrieve(prepared.key, prepared.as_of, timeout_s=5.0)
        context, mask = self.regime_only()
        self.batcher.warm({**prepared.inputs, "pattern_context": context, "pattern_mask": mask}, rounds)
        if self.inputs.rule is not None:  # its compiled loops load (or compile, on a fresh install) now
            self.inputs.rule.choose(np.zeros((1, len(ACTIONS))), np.zeros(1, np.int64))
            self.inputs.rule.choose_row(np.zeros(len(ACTIONS)), 0)  # the server's one-row call
        log.info("warmed %s: features %.0f us (%s), engine batches 1..%d", self.name, 1e6 * float(np.median(timings)),
                 "inline" if self.features_inline else "in a thread", self.batcher.max_batch)

    def _warm_stream(self, bars: SampleBars, prepared: Prepared, fine: Bars) -> None:
        """A stream opened on the warm-up window and one bar appended: an append's compiled path loads (or
        compiles, on a fresh install: seconds, on the loop) now, not at a gateway's first live bar."""
        window = self.open_stream(bars, prepared, self.config.serve.sessions)
        last = float(fine.c[-1])
        bar = WireBars([int(fine.t[-1]) + self._fine_ns], [last], [last], [last], [last], [float(fine.v[-1])])
        self.extend(window, _as_received(Append(id="warm-up", instrument="warm-up", session="warm-up", fine=bar,
                                                coarse=WireBars([], [], [], [], [], []))))
        self.prepare_stream(window, "warm-up", self.inputs.timeframe)

    def start(self) -> ModelHost:
        self.batcher.start()
        return self

    def acquire(self) -> ModelHost:
        self._users += 1
        return self

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self) -> None:
        """Wait (on the loop that uses this host) until no request holds it."""
        if self._users:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the inference thread (within `timeout`) and release the engine and the index. An engine whose
        thread is still running a batch is left open: closing it under that batch could crash the process."""
        if self.batcher.stop(timeout):
            self.batcher.engine.close()
        else:
            log.warning("%s: the inference thread is still running a batch after %.1f s; its engine is left open",
                        self.name, timeout)
        if self.retriever is not None:
            self.retriever.close()


# ---------------------------------------------------------------- from a bundle


def read_overlay(path: str | Path) -> dict[str, Any]:
    """A serve config file (e.g. config/serve.yaml) as raw sections, `base:` followed; validated only when
    laid over a bundle's config (`overlay_config`), since on its own it lacks the model section."""
    from dualhrq.config import read_yaml  # the loader every config file goes through

    return read_yaml(Path(path))


def overlay_config(base: Config, overlay: dict[str, Any], source: str) -> Config:
    """The bundle's config with serve-time sections (serve, act, patterns, compliance) from a serve config
    laid over it, section by section. The model section is the bundle's and cannot be changed."""
    from dualhrq.config import merge_sections  # the same section-wise merge `base:` files use

    if "model" in overlay:
        raise ConfigurationError(f"{source}: model: comes from the bundle and cannot be overridden at serve time")
    return config_from_dict(merge_sections(config_to_dict(base), overlay), source)


def serve_settings(bundle_path: str | Path, overlay: dict[str, Any], source: str) -> Config:
    """The config a bundle will be served with, from its manifest alone (cheap: nothing hashed or loaded)."""
    from dualhrq.export.bundle import load_bundle

    return overlay_config(load_bundle(bundle_path, verify=False).config, overlay, source)


def _as_received(req: Signal | Append) -> Signal | Append:
    """A warm-up request as the server gets one: through its bytes, so that the bar reader's compiled pass loads
    (or compiles, on a fresh install: seconds) before the first live request, not during it."""
    body = encode(req)
    return decode_request(body, len(body))  # type: ignore[return-value]


def _when(ns: int) -> str:
    """A bar time for a message: ISO 8601 UTC to the second."""
    return f"{np.datetime64(ns, 'ns').astype('datetime64[s]')}Z"


@contextlib.contextmanager
def _refused_features() -> Iterator[None]:
    """Features that come out non-finite from validated bars are the bars' numbers' doing (a few subnormal
    prices): `invalid_input` naming the bars, not `internal`, which a client would retry."""
    try:
        yield
    except IncompleteFeatures as e:
        raise ProtocolError("invalid_input", str(e), "coarse" if e.part == "coarse" else "fine") from None


def _spacing(ns: int) -> str:
    """A bar spacing in words: its timeframe's name, or, off the whole seconds (times sent in seconds or ms
    instead of ns, say), the nanoseconds with a reminder of the unit."""
    try:
        return timeframe_name(ns)
    except DataError:
        return f"{ns} ns (times are ns since the epoch)"


def synthetic_bars(n: int, step_ns: int, end_ns: int, seed: int = 0) -> Bars:
    """A plausible random walk of n bars ending at end_ns: warm-up input that passes bar validation."""
    rng = np.random.default_rng(seed)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    o = np.concatenate([[100.0], c[:-1]])
    spread = np.abs(rng.normal(0, 0.001, n)) * c
    t = end_ns - step_ns * np.arange(n - 1, -1, -1, dtype=np.int64)
    return Bars(t, o, np.maximum(o, c) + spread, np.minimum(o, c) - spread, c, rng.uniform(1e3, 2e3, n))


def load_host(bundle_path: str | Path, overlay: dict[str, Any] | None = None, hooks: HostHooks | None = None,
              overlay_source: str = "serve config") -> ModelHost:
    """Verify and load a bundle, build its engine, retriever and batcher, and warm them (blocking)."""
    from dualhrq.export.bundle import load_bundle
    from dualhrq.export.engines import make_engine
    from dualhrq.patterns.retriever import Retriever

    hooks = hooks or HostHooks()
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_path, verify=True)
    cfg = overlay_config(bundle.config, overlay or {}, overlay_source)
    inputs = bundle.inputs(cfg)
    built = inputs.artifacts.pattern_window
    if cfg.patterns.window != built:
        raise ConfigurationError(f"patterns.window: {cfg.patterns.window}, but {bundle_path} was trained with "
                                 f"{built}; the window is part of the model's inputs and cannot change at serve time")
    if inputs.rule is None:
        log.warning("%s has no decision rule (trained without a validation slice): serving the policy's argmax",
                    bundle_path)
    serve, m = cfg.serve, cfg.model
    engine = make_engine(bundle, serve)
    retriever = Retriever(inputs.library, inputs.encoder, cfg.patterns, m.pattern_dim, m.pattern_k)
    batcher = Batcher(engine, cfg.act, serve, bundle.initial_carry, upstream=hooks.upstream, on_batch=hooks.on_batch)
    host = ModelHost(name=bundle.model_version, config=cfg, inputs=inputs, batcher=batcher, retriever=retriever)
    coarse_n, fine_n = host.needs
    fine_ns, coarse = parse_rule(inputs.timeframe).ns, parse_rule(inputs.coarse_rule)
    end = 1_700_000_000 * 10**9
    end -= (end - coarse.anchor_ns) % coarse.ns  # a period end: the fine bars close it, its coarse bar is due
    host.warm(synthetic_bars(coarse_n, coarse.ns, end), synthetic_bars(fine_n, fine_ns, end))
    log.info("loaded %s from %s in %.1f s (hashes verified, engine %s warm)", host.name, bundle_path,
             time.perf_counter() - t0, engine.name)
    return host
