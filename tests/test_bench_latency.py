"""`dualhrq bench latency` against a scripted server: request windows cut with the coarse rule the server reports,
and a run whose requests all fail is a failed run."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from runtime_fixtures import ScriptedPeer

from dualhrq.bench.latency import load_rate
from dualhrq.cli import main as cli
from dualhrq.errors import HRMError
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import hold_reply

DAY_NS = 86_400_000_000_000


def scripted_server(coarse_rule: str, fail_with: str | None = None, engine_us: int = 0) -> ScriptedPeer:
    """A server that answers a ping with a ready pong for a model of `coarse_rule`, and every other request with
    a signal reply reporting `engine_us` of engine time (or the error `fail_with`)."""

    def reply(req: dict) -> p.Reply:
        if req["type"] == "ping":
            return p.Pong(id=req["id"], model="scripted", ready=True, uptime_s=1.0, needs=p.Needs(3, 10),
                          rules_version="", timeframe="1h", coarse_rule=coarse_rule)
        if fail_with:
            return p.ErrorReply(id=req["id"], code=fail_with, message="scripted", field="fine")
        reply = hold_reply(req["id"], "scripted")
        return msgspec.structs.replace(reply, timing_us=msgspec.structs.replace(reply.timing_us, engine=engine_us))

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


def test_load_mode_runs_batch_one_then_an_open_loop_at_the_fraction_of_its_engine_p50(tmp_path, capsys):
    """--load 0.5 against an engine of 20 ms: 25 requests per second, open loop, judged against twice its p99."""
    out = tmp_path / "bench.json"
    with scripted_server("1d", engine_us=20_000) as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "5", "--warmup", "0",
                    "--load", "0.5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    load = report["load"]
    assert report["normal"]["mode"] == "closed" and load["mode"] == "open" and load["requests"] == 5
    assert load["offered_rps"] == pytest.approx(25.0)
    # five requests due 40 ms apart: the phase lasts at least the 160 ms from the first to the last
    assert load["throughput_rps"] <= 5 / 0.16
    assert load["against_batch1"]["bound_ms"] == pytest.approx(40.0)
    assert "open loop offered 25.0 req/s" in printed and "against twice the engine's batch-1 p99 40.000 ms" in printed


def test_load_mode_against_a_server_that_answers_no_signal_fails_naming_the_phase(capsys):
    with scripted_server("1d", fail_with="invalid_input") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "3", "--warmup", "0",
                    "--load", "0.8"]) == 2
    assert "no request got a signal reply in phase normal" in capsys.readouterr().err


def test_the_load_rate_is_the_fraction_over_the_batch_one_engine_p50():
    assert load_rate({"engine_ms": {"p50": 20.0}}, 0.8) == pytest.approx(40.0)
    with pytest.raises(HRMError, match="measured no engine time"):
        load_rate({"engine_ms": {"p50": float("nan")}}, 0.8)


def test_json_and_plot_in_a_missing_directory_are_written_and_reported_where_they_are(tmp_path, capsys):
    """The directory is made and said so; a plot named without an extension is the .png written."""
    new = tmp_path / "new" / "dir"
    with scripted_server("1d") as server:
        assert cli(["bench", "latency", "--connect", server.address, "--requests", "2", "--warmup", "0",
                    "--json", str(new / "r.json"), "--plot", str(new / "latency")]) == 0
    printed = capsys.readouterr().out
    assert f"json: {new / 'r.json'} (made the directory {new})" in printed
    assert f"plot: {new / 'latency.png'}\n" in printed
    assert json.loads((new / "r.json").read_text())["normal"]["requests"] == 2
    assert (new / "latency.png").stat().st_size > 0 and not (new / "latency").exists()
