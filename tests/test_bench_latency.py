"""`dualhrq bench latency` against a scripted server: request windows cut with the coarse rule the server reports,
and a run whose requests all fail is a failed run."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_fixtures import ScriptedPeer

from dualhrq.cli import main as cli
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import hold_reply

DAY_NS = 86_400_000_000_000


def scripted_server(coarse_rule: str, fail_with: str | None = None) -> ScriptedPeer:
    """A server that answers a ping with a ready pong for a model of `coarse_rule`, and every other request with
    a signal reply (or the error `fail_with`)."""

    def reply(req: dict) -> p.Reply:
        if req["type"] == "ping":
            return p.Pong(id=req["id"], model="scripted", ready=True, uptime_s=1.0, needs=p.Needs(3, 10),
                          rules_version="", timeframe="1h", coarse_rule=coarse_rule)
        if fail_with:
            return p.ErrorReply(id=req["id"], code=fail_with, message="scripted", field="fine")
        return hold_reply(req["id"], "scripted")

    return ScriptedPeer(lambda bodies: [p.encode(reply(bodies[-1]))])


def requests_of(server: ScriptedPeer) -> list[dict]:
    """What the bench sent but its pings."""
    return [b for b in server.bodies if b["type"] != "ping"]


@pytest.mark.parametrize("mode", [[], ["--session"]])
def test_the_request_windows_coarse_bars_follow_the_servers_coarse_rule(mode, capsys):
    """A model trained on weekly coarse bars gets weekly ones (before: the dataset's default, daily)."""
    with scripted_server("1w") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "3", "--warmup", "1", *mode]) == 0
    sent = requests_of(server)
    first = sent[0]
    assert first["type"] == "signal" and len(first["coarse"]["t"]) == 3 and len(first["fine"]["t"]) == 10
    assert np.diff(first["coarse"]["t"]).min() >= 7 * DAY_NS
    if mode:  # the appends follow on one stream, each with its one new bar
        assert [r["type"] for r in sent[1:]] == ["append"] * 4
        assert all(len(r["fine"]["t"]) == 1 for r in sent[1:])
    assert "replies: signal 3" in capsys.readouterr().out


def test_a_run_in_which_no_request_got_a_signal_fails_naming_the_replies(capsys):
    with scripted_server("1d", fail_with="invalid_input") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "4", "--warmup", "0"]) == 2
    err = capsys.readouterr().err
    assert "no request got a signal reply in phase normal (replies: invalid_input 4)" in err


def test_a_server_that_reports_no_coarse_rule_is_refused(capsys):
    with scripted_server("") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "1", "--warmup", "0"]) == 2
    assert "has no coarse_rule" in capsys.readouterr().err and not requests_of(server)
