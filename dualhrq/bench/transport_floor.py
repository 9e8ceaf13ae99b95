"""The transport floor: what one reply costs without the model's host work, measured beside the server.

`bench latency --floor` sends the same requests to this echo: a process with the server's socket (a ROUTER
bound on TCP) that answers each request at once, after one pass over as many bytes as the served graph. The
engine reads every weight at every segment, and that pass evicts the caches the way the engine's does, so the
ZeroMQ round trip that follows runs on caches as cold as a real request's. Its only other work is to decode the
request and encode a reply, in Python, and it has no broker hop (the server's `--workers` would add one). The
reply reports the pass as its engine time: end-to-end minus engine of this phase is the floor under the server's
own figure: the round trip itself, with no bars, features, retrieval or decision.

    python -m dualhrq.bench.transport_floor --bind tcp://127.0.0.1:5599 --pass-bytes 50000000
"""

from __future__ import annotations

import argparse
import time

import msgpack
import numpy as np
import zmq

from dualhrq.runtime import protocol as p


def _signal_reply(rid: str, pass_us: int) -> p.SignalReply:
    """A well-formed signal reply (a client decodes it as the server's) carrying the pass as its engine time."""
    return p.SignalReply(
        id=rid, model="transport-floor", action="HOLD", probs=p.one_hot("HOLD"), confidence=1.0,
        quantity=0.0, forecast=p.Forecast(0.0, 0.0), value=0.0, regime=p.Regime(0, [1.0, 0.0, 0.0, 0.0]),
        patterns=p.Patterns(used=0, fail_open=False, reason=None), act=p.Act(1, "max"),
        compliance=p.Compliance(True, "HOLD", []), timing_us=p.Timing(0, 0, 0, 0, pass_us, pass_us))


def serve_echo(bind: str, pass_bytes: int) -> None:
    """Answer pings (ready) and every other request (a signal reply carrying its id) until killed."""
    weights = np.ones(max(pass_bytes, 0), np.uint8)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(bind)
    while True:
        *envelope, body = sock.recv_multipart()
        try:
            req = msgpack.unpackb(body, raw=False)
            rid, kind = str(req.get("id") or "floor"), req.get("type")
        except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
            rid, kind = "floor", None
        if kind == "ping":
            reply: p.Reply = p.Pong(id=rid, model="transport-floor", ready=True, uptime_s=0.0, needs=p.Needs(0, 0),
                                    rules_version="", workers=1, timeframe="", coarse_rule="")
        else:
            t = time.perf_counter()
            weights.sum()  # the engine's pass over its weights
            reply = _signal_reply(rid, int((time.perf_counter() - t) * 1e6))
        sock.send_multipart([*envelope, p.encode(reply)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dualhrq.bench.transport_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", required=True, help="address to bind, e.g. tcp://127.0.0.1:5599")
    parser.add_argument("--pass-bytes", type=int, default=0,
                        help="bytes read before each reply (the graph's size)")
    args = parser.parse_args(argv)
    serve_echo(args.bind, args.pass_bytes)


if __name__ == "__main__":
    main()
