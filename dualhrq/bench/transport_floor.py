"""The transport floor: what one reply costs with no host work at all, measured beside the server.

`bench latency --floor` sends the same requests to this echo: a process with the server's socket (a ROUTER
bound on TCP) that answers each request at once, after one pass over as many bytes as the served graph. The
engine reads every weight at every segment, and that pass evicts the caches the way the engine's does, so the
ZeroMQ round trip that follows runs on caches as cold as a real request's. The reply reports the pass as its
engine time: end-to-end minus engine of this phase is the floor under the server's own figure, the part of it
that no host code can remove.

    python -m dualhrq.bench.transport_floor --bind tcp://127.0.0.1:5599 --pass-bytes 50000000
"""

from __future__ import annotations

import argparse
import time

import msgpack
import numpy as np
import zmq

REPLY_PAD = 320  # bytes: a signal reply's size, less the fields this one has


def serve_echo(bind: str, pass_bytes: int) -> None:
    """Answer pings (ready) and every other request (a `signal` reply carrying its id) until killed."""
    weights = np.ones(max(pass_bytes, 0), np.uint8)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(bind)
    pad = b"\0" * REPLY_PAD
    while True:
        *envelope, body = sock.recv_multipart()
        try:
            req = msgpack.unpackb(body, raw=False)
            rid, kind = req.get("id"), req.get("type")
        except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
            rid, kind = None, None
        if kind == "ping":
            reply = {"type": "pong", "id": rid, "ready": True}
        else:
            t = time.perf_counter()
            weights.sum()  # the engine's pass over its weights
            pass_us = int((time.perf_counter() - t) * 1e6)
            reply = {"type": "signal", "id": rid, "patterns": {"fail_open": False, "reason": None},
                     "timing_us": {"engine": pass_us, "total": pass_us}, "pad": pad}
        sock.send_multipart([*envelope, msgpack.packb(reply, use_bin_type=True)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dualhrq.bench.transport_floor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bind", required=True, help="address to bind, e.g. tcp://127.0.0.1:5599")
    p.add_argument("--pass-bytes", type=int, default=0, help="bytes read before each reply (the graph's size)")
    args = p.parse_args(argv)
    serve_echo(args.bind, args.pass_bytes)


if __name__ == "__main__":
    main()
