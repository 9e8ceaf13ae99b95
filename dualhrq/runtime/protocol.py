"""Wire protocol v1 (docs/PROTOCOL.md): the messages, strict decoding, and the error each bad body earns.

Every body is one MessagePack map tagged by ``type``. Decoding takes a fast path (one typed msgspec decode, the
bars kept raw and read in one compiled pass by dualhrq.runtime.bar_columns) and, only when that fails, a slow
path that decodes generically to say exactly what is wrong: the error code the protocol assigns, the offending
field, and the request id whenever the body got far enough to carry one. Free of torch: the gateway client
imports this module too (numpy and numba it shares with the bars' validation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Union

import msgspec
import numpy as np

from dualhrq.compliance.gate import MarketError, MarketSnapshot, check_position
from dualhrq.data import bars as data_bars
from dualhrq.errors import DataError
from dualhrq.model.vocab import ACTIONS  # the wire order of `probs` (and of the graph's policy_logits)
from dualhrq.runtime import bar_columns

PROTOCOL_VERSION = 1

ErrorCode = Literal["bad_request", "invalid_input", "unsupported_version", "unknown_type", "deadline_exceeded",
                    "overloaded", "unauthorized", "internal", "resync_required"]
AdminCommand = Literal["stats", "disable_patterns", "enable_patterns", "kill_switch_on", "kill_switch_off",
                       "reload"]
FailOpenReason = Literal["timeout", "disabled", "error", "empty"]

RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Instrument = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class ProtocolError(Exception):
    """A request that earns an error reply; `field` names the offending field (dotted, with [index])."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None, request_id: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.code, self.message, self.field, self.request_id = code, message, field, request_id
        self.kind = kind  # the request's type when the body got far enough to tell (metrics label)

    def reply(self) -> ErrorReply:
        return ErrorReply(id=self.request_id, code=self.code, message=self.message, field=self.field)


# ---------------------------------------------------------------- requests


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class WireBars(_Strict):
    """One timeframe's bars, oldest first; `t` in ns since the epoch. Lists where a client builds them; numpy
    columns (int64 `t`, float64 prices) in a request `decode_request` read."""

    t: Sequence[int]
    o: Sequence[float]
    h: Sequence[float]
    l: Sequence[float]  # noqa: E741 - the wire name
    c: Sequence[float]
    v: Sequence[float]

    def __len__(self) -> int:
        return len(self.t)


class Market(_Strict):
    ts: int
    last: float
    bid: float
    ask: float
    prior_close: float
    luld_tier: Literal[1, 2]
    position: float | None = None  # the caller's position (long > 0); authoritative over the gate's simulation
    ssr_active: bool = False  # the feed's short-sale-restriction indicator


class Ping(_Strict, tag_field="type", tag="ping"):
    id: RequestId


class Signal(_Strict, tag_field="type", tag="signal"):
    id: RequestId
    v: int
    instrument: Instrument
    timeframe: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    coarse: WireBars
    fine: WireBars
    deadline_ms: float | None = None
    market: Market | None = None
    session: SessionId | None = None  # starts (or restarts) a stream that later `append`s extend


class Append(_Strict, tag_field="type", tag="append"):
    """A stream's new bars since its previous request: at least one fine bar, and the coarse bars closed since."""

    id: RequestId
    instrument: Instrument
    session: SessionId
    fine: WireBars
    coarse: WireBars
    deadline_ms: float | None = None
    market: Market | None = None


class Admin(_Strict, tag_field="type", tag="admin"):
    id: RequestId
    cmd: AdminCommand
    token: str = ""  # may be empty when the client's CURVE key is an admin key
    bundle: str = ""  # reload only: the bundle to load; empty reloads the path the server started with


Request = Union[Ping, Signal, Append, Admin]
REQUEST_TYPES = ("ping", "signal", "append", "admin")
BarRequest = Union[Signal, Append]  # the requests answered with a signal reply

# ---------------------------------------------------------------- replies


class _Reply(msgspec.Struct, frozen=True):
    pass


class Needs(_Reply):
    coarse: int
    fine: int


class Pong(_Reply, tag_field="type", tag="pong"):
    id: str
    model: str
    ready: bool
    uptime_s: float
    needs: Needs
    rules_version: str  # extra field (documented): the compliance rule table the gate enforces
    workers: int = 1  # engine workers alive behind this address
    timeframe: str = ""  # the fine timeframe the model was trained on ("": no model loaded)
    coarse_rule: str = ""  # how its coarse bars are made from the fine ones, e.g. "1d"


class Forecast(_Reply):
    coarse: float
    fine: float


class Regime(_Reply):
    id: int
    probs: list[float]


class Patterns(_Reply):
    used: int
    fail_open: bool
    reason: FailOpenReason | None


class Act(_Reply):
    segments: int
    halted: Literal["q", "max"]


class Compliance(_Reply):
    allowed: bool
    original_action: str
    reasons: list[str]


class Timing(_Reply):
    decode: int
    features: int
    retrieval: int
    queue: int
    engine: int
    total: int


class SignalReply(_Reply, tag_field="type", tag="signal"):
    id: str
    model: str
    action: str
    probs: list[float]
    confidence: float
    quantity: float
    forecast: Forecast
    value: float
    regime: Regime
    patterns: Patterns
    act: Act
    compliance: Compliance
    timing_us: Timing


class AdminReply(_Reply, tag_field="type", tag="admin"):
    id: str
    cmd: str
    ok: bool
    detail: dict[str, Any] = {}


class ErrorReply(_Reply, tag_field="type", tag="error"):
    id: str | None
    code: ErrorCode
    message: str
    field: str | None = None


Reply = Union[Pong, SignalReply, AdminReply, ErrorReply]


def _raw_bars_twin(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """`cls` with its bars kept as raw MessagePack: the server decodes a bar request into this, then reads the
    bars in one compiled pass (dualhrq.runtime.bar_columns) instead of a Python float per number."""
    fields = [(f.name, msgspec.Raw if f.type is WireBars else f.type, *(() if f.required else (f.default,)))
              for f in msgspec.structs.fields(cls)]
    return msgspec.defstruct(f"Raw{cls.__name__}", fields, bases=(_Strict,), tag_field="type",
                             tag=cls.__struct_config__.tag, frozen=True, forbid_unknown_fields=True)


_RAW_BARS = {_raw_bars_twin(cls): cls for cls in (Signal, Append)}  # twin -> the request it decodes
_request_decoder = msgspec.msgpack.Decoder(Union[(Ping, Admin, *_RAW_BARS)])
_wire_bars_decoder = msgspec.msgpack.Decoder(WireBars)
_NO_BARS = msgspec.msgpack.encode(WireBars([], [], [], [], [], []))
_NO_WIRE_BARS = WireBars(*(np.empty(0, dtype) for dtype in (np.int64, *[np.float64] * 5)))
for _column in msgspec.structs.astuple(_NO_WIRE_BARS):
    _column.flags.writeable = False  # one for every request: nobody may write to it
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_encoder = msgspec.msgpack.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


# What a decoder may raise on hostile bytes: its own errors, invalid UTF-8 in a str (UnicodeDecodeError is a
# ValueError), nesting deeper than the interpreter allows.
UNDECODABLE = (msgspec.MsgspecError, ValueError, RecursionError)


def decode_reply(body: bytes) -> Reply:
    """Client side: a reply body as its Struct (raises one of UNDECODABLE on a body that is not a reply)."""
    return _reply_decoder.decode(body)


def reply_id(body: bytes) -> str | None:
    """The id a body that `decode_reply` refused still carries, if it has a readable one: it says whose request
    the unreadable reply answers."""
    try:
        obj = msgspec.msgpack.decode(body)
    except UNDECODABLE:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) else None


def one_hot(action: str) -> list[float]:
    """`probs` that put all the weight on `action`, in the wire order: replies made without a model."""
    return [float(a == action) for a in ACTIONS]


# ---------------------------------------------------------------- decoding requests


def decode_request(body: bytes, max_body_bytes: int) -> Request:
    """Bytes -> a well-formed request, or ProtocolError with the code, the field and (if readable) the id.

    Well-formed means the schema holds and every number is finite; whether a signal's bars are usable for
    the loaded model (counts, order, prices) is `check_signal`'s job, since it needs the model's `needs`.
    """
    if len(body) > max_body_bytes:
        # Not decoded at all (that is the point of the limit), so the id cannot be read: it is null.
        raise ProtocolError("bad_request", f"body of {len(body)} bytes exceeds the maximum of {max_body_bytes}")
    try:
        req = _request_decoder.decode(body)
    except UNDECODABLE:
        raise _diagnose(body) from None
    if (cls := _RAW_BARS.get(type(req))) is None:
        return req
    kind = cls.__struct_config__.tag
    if cls is Signal and req.v != PROTOCOL_VERSION:
        raise _unsupported(req.v, req.id, kind)
    values = msgspec.structs.asdict(req)
    for name in ("coarse", "fine"):
        values[name] = _read_bars(values[name], name, req.id, kind)
    bar_request = cls(**values)
    _check_signal_numbers(bar_request)
    return bar_request


def _unsupported(version: int, request_id: str | None, kind: str | None) -> ProtocolError:
    return ProtocolError("unsupported_version", f"protocol version {version} is not supported; this server speaks "
                         f"v{PROTOCOL_VERSION}", "v", request_id, kind)


def _read_bars(raw: msgspec.Raw, name: str, request_id: str, kind: str) -> WireBars:
    """A request's `coarse` or `fine` map: numpy columns in one pass where it holds plain numbers; otherwise the
    typed decode's lists, or its error (bad_request naming e.g. ``fine.c[3]``)."""
    if len(raw) == len(_NO_BARS) and memoryview(raw) == _NO_BARS:  # an append's coarse bars, mostly
        return _NO_WIRE_BARS
    if (columns := bar_columns.read_columns(raw)) is not None:
        return WireBars(*columns)
    try:
        return _wire_bars_decoder.decode(raw)
    except msgspec.ValidationError as e:
        field, message = _readable(str(e))
        raise ProtocolError("bad_request", message, f"{name}.{field}" if field else name, request_id,
                            kind) from None
    except UNDECODABLE as e:  # kept raw, the map was only skipped over: e.g. invalid UTF-8 in a key
        raise ProtocolError("bad_request", f"not valid MessagePack: {e}", name, request_id, kind) from None


def _diagnose(body: bytes) -> ProtocolError:
    """Why the typed decode failed, in the protocol's terms (runs only for bad bodies)."""
    try:
        obj = msgspec.msgpack.decode(body)
    except UNDECODABLE:
        return ProtocolError("bad_request", "body is not valid MessagePack")
    if not isinstance(obj, dict):
        return ProtocolError("bad_request", f"body is a MessagePack {_kind(obj)}, not a map")
    if not all(isinstance(k, str) for k in obj):
        return ProtocolError("bad_request", "map keys must be strings")
    rid = obj.get("id")
    if not isinstance(rid, str) or not 1 <= len(rid) <= 64:
        what = "missing" if "id" not in obj else f"must be a string of 1 to 64 characters, got {_kind(rid)}"
        return ProtocolError("bad_request", f"id {what}", "id")
    kind = obj.get("type")
    if kind is None:
        return ProtocolError("bad_request", "type missing", "type", rid)
    if not isinstance(kind, str):
        return ProtocolError("bad_request", f"type must be a string, got {_kind(kind)}", "type", rid)
    if kind not in REQUEST_TYPES:
        return ProtocolError("unknown_type", f"unknown message type {kind!r}; expected one of "
                             f"{', '.join(REQUEST_TYPES)}", "type", rid)
    if kind == "signal":
        version = obj.get("v")
        if isinstance(version, int) and not isinstance(version, bool) and version != PROTOCOL_VERSION:
            return _unsupported(version, rid, kind)
    try:
        msgspec.convert(obj, Request, strict=True)
    except msgspec.ValidationError as e:
        field, message = _readable(str(e))
        return ProtocolError("bad_request", message, field, rid, kind)
    # The map decoded generically keeps a repeated key's last value, which can pass where an earlier one did not.
    if (repeated := _repeated_key(body)) is not None:
        return ProtocolError("bad_request", f"key {repeated!r} appears more than once in a map", repeated, rid, kind)
    return ProtocolError("internal", "request rejected by the decoder for an unrecognised reason", None, rid, kind)


def _repeated_key(body: bytes) -> str | None:
    """The first key that a map of `body` repeats, if one does (msgspec cannot tell; an error path alone)."""
    import msgpack

    repeated: list[str] = []

    def pairs(items: list[tuple[Any, Any]]) -> dict:
        keys = [k for k, _ in items]
        if not repeated and len(set(map(repr, keys))) < len(keys):
            repeated.append(next(str(k) for i, k in enumerate(keys) if k in keys[:i]))
        return dict(items)

    msgpack.unpackb(body, object_pairs_hook=pairs, strict_map_key=False)
    return repeated[0] if repeated else None


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _readable(err: str) -> tuple[str | None, str]:
    """msgspec's 'Expected `int`, got `float` - at `$.fine.t[3]`' -> ('fine.t[3]', 'expected int, got float')."""
    m = _AT.match(err)
    assert m is not None  # the pattern matches any string
    path = (m.group("path") or "").lstrip(".")
    msg = m.group("msg").replace("`", "")
    named = re.search(r"(?:unknown|missing required) field (\S+)", msg)
    if named:  # msgspec reports these at the parent: append the field itself
        name = named.group(1)
        path = f"{path}.{name}" if path else name
        msg = "unknown field" if "unknown" in msg else "required field missing"
    msg = msg[:1].lower() + msg[1:]
    return path or None, msg


def _kind(value: object) -> str:
    return {dict: "map", list: "array", str: "string", bytes: "binary", bool: "boolean", int: "integer",
            float: "float", type(None): "nil"}.get(type(value), type(value).__name__)


def _check_signal_numbers(req: BarRequest) -> None:
    kind = type(req).__struct_config__.tag

    def fail(code: ErrorCode, message: str, field: str) -> ProtocolError:
        return ProtocolError(code, message, field, req.id, kind)

    if req.deadline_ms is not None and not (math.isfinite(req.deadline_ms) and req.deadline_ms > 0):
        raise fail("invalid_input", f"deadline_ms must be a finite number > 0, got {req.deadline_ms}", "deadline_ms")
    if (m := req.market) is not None:
        try:  # the gate's own checks, here at decoding: a bad market costs no features and no engine time
            MarketSnapshot(m.ts, m.last, m.bid, m.ask, m.prior_close, m.luld_tier, m.ssr_active)
            check_position(m.position, "market.position")
        except MarketError as e:
            raise fail("invalid_input", e.reason, e.field) from None


# ---------------------------------------------------------------- bars for the model


def check_bars(wire: WireBars, name: str, minimum: int, request_id: str) -> data_bars.Bars:
    """A signal's `coarse` or `fine` as validated numpy bars, with the checks every data entry point shares
    (dualhrq.data.bars); anything unusable is invalid_input naming e.g. ``fine.c[12]``."""
    if len(wire) < minimum:
        raise ProtocolError("invalid_input", f"{len(wire)} bars, the model needs at least {minimum}", name,
                            request_id)
    try:
        if isinstance(wire.t, np.ndarray):  # as decode_request reads bars: six columns of one length, typed
            return data_bars.Bars.checked(*msgspec.structs.astuple(wire), name)
        return data_bars.Bars.from_columns(msgspec.structs.asdict(wire), name)
    except data_bars.BarsError as e:
        raise ProtocolError("invalid_input", str(e), f"{name}.{e.field}[{e.row}]", request_id) from None
    except DataError as e:
        raise ProtocolError("invalid_input", str(e), name, request_id) from None


def wire_bars(bars: data_bars.Bars) -> WireBars:
    """numpy bars as the wire struct (clients, warm-up requests)."""
    return WireBars(*(getattr(bars, k).tolist() for k in ("t", "o", "h", "l", "c", "v")))
