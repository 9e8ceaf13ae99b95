"""`dualhrq bench latency` against a scripted server: request windows cut with the coarse rule the server reports,
and a run whose requests all fail is a failed run."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
import zmq
from runtime_fixtures import free_port

from dualhrq.cli import main as cli
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import hold_reply

DAY_NS = 86_400_000_000_000


class ScriptedServer:
    """A ROUTER that answers a ping with a ready pong for a model of `coarse_rule`, and every other request with a
    signal reply (or the error `fail_with`); it keeps every request it got."""

    def __init__(self, coarse_rule: str, fail_with: str | None = None) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.coarse_rule, self.fail_with = coarse_rule, fail_with
        self.requests: list[dict] = []
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _reply(self, req: dict) -> p.Reply:
        if req["type"] == "ping":
            return p.Pong(id=req["id"], model="scripted", ready=True, uptime_s=1.0, needs=p.Needs(3, 10),
                          rules_version="", timeframe="1h", coarse_rule=self.coarse_rule)
        self.requests.append(req)
        if self.fail_with:
            return p.ErrorReply(id=req["id"], code=self.fail_with, message="scripted", field="fine")
        return hold_reply(req["id"], "scripted")

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(self.address)
        self._ready.set()
        while not self._stop.is_set():
            if sock.poll(20):
                *envelope, body = sock.recv_multipart()
                sock.send_multipart([*envelope, p.encode(self._reply(msgpack.unpackb(body)))])
        sock.close(0)
        ctx.term()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("mode", [[], ["--session"]])
def test_the_request_windows_coarse_bars_follow_the_servers_coarse_rule(mode, capsys):
    """A model trained on weekly coarse bars gets weekly ones (before: the dataset's default, daily)."""
    with ScriptedServer("1w") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "3", "--warmup", "1", *mode]) == 0
    first = server.requests[0]
    assert first["type"] == "signal" and len(first["coarse"]["t"]) == 3 and len(first["fine"]["t"]) == 10
    assert np.diff(first["coarse"]["t"]).min() >= 7 * DAY_NS
    if mode:  # the appends follow on one stream, each with its one new bar
        assert [r["type"] for r in server.requests[1:]] == ["append"] * 4
        assert all(len(r["fine"]["t"]) == 1 for r in server.requests[1:])
    assert "replies: signal 3" in capsys.readouterr().out


def test_a_run_in_which_no_request_got_a_signal_fails_naming_the_replies(capsys):
    with ScriptedServer("1d", fail_with="invalid_input") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "4", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert "no request got a signal reply in phase normal (replies: invalid_input 4)" in err


def test_a_server_that_reports_no_coarse_rule_is_refused(capsys):
    with ScriptedServer("") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "1", "--warmup", "0"]) == 2
    assert "has no coarse_rule" in capsys.readouterr().err and not server.requests
