"""Serving a real (tiny, untrained) bundle: verified and warmed at load, the same decision as the Python API."""

from __future__ import annotations

import dataclasses
import shutil

import msgspec
import numpy as np
import pytest
from runtime_fixtures import ServerThread, eurusd_history, real_signal_body, serving, tiny_bundle  # noqa: F401

from dualhrq.data.windows import needs
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.export.bundle import load_bundle
from dualhrq.features import PositionRule
from dualhrq.runtime import protocol as p
from dualhrq.runtime.client import Client, RequestFailed
from dualhrq.runtime.host import load_host

OVERLAY = {"serve": {"intra_op_threads": 1, "max_batch": 4}}


def test_load_host_verifies_warms_and_knows_what_requests_need(tiny_bundle):
    host = load_host(tiny_bundle, OVERLAY)
    try:
        bundle = load_bundle(tiny_bundle)
        assert host.name == bundle.model_version
        assert host.needs == needs(bundle.config.model, bundle.inputs().artifacts.pattern_window,
                                   PositionRule.from_config(bundle.config.data))
        assert host.retriever is not None  # the bundle carries a pattern library
        assert host.batcher.max_batch == 4
    finally:
        host.close()


def test_a_tampered_bundle_is_refused(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    graph = copy / "segment_fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="segment_fp32.onnx"):
        load_host(copy, OVERLAY)


def test_the_serve_overlay_cannot_change_the_model(tiny_bundle):
    with pytest.raises(ConfigurationError, match="model"):
        load_host(tiny_bundle, {"model": {"n_cycles": 3}})


@pytest.fixture(scope="module")
def served(tiny_bundle):
    with serving(tiny_bundle, OVERLAY) as st:
        yield st


def test_ping_gives_the_models_needs(served, tiny_bundle):
    with Client(served.address) as c:
        pong = c.ping()
    bundle = load_bundle(tiny_bundle)
    assert (pong.needs.coarse, pong.needs.fine) == needs(bundle.config.model, bundle.inputs().artifacts.pattern_window,
                                                            PositionRule.from_config(bundle.config.data))
    assert pong.ready and pong.model == bundle.model_version
    assert (pong.timeframe, pong.coarse_rule) == ("1h", "1d")


def test_bars_of_another_timeframe_are_refused_naming_it(served):
    from runtime_fixtures import wire_bars

    with Client(served.address) as c:
        pong = c.ping()
        day = 86_400_000_000_000
        daily = wire_bars(pong.needs.fine + 5, step=day)
        coarse = wire_bars(pong.needs.coarse + 5, step=7 * day, end=1_700_000_000_000_000_000 - day)
        for timeframe, field in (("1d", "timeframe"), ("1h", "fine.t")):
            with pytest.raises(RequestFailed) as e:
                c.signal("EURUSD", timeframe, coarse, daily)
            assert e.value.code == "invalid_input" and e.value.field == field, e.value


def test_bar_times_sent_in_seconds_are_invalid_input_on_fine_t_not_an_internal_error(served):
    from runtime_fixtures import wire_bars

    with Client(served.address) as c:
        pong = c.ping()
        hour = 3_600_000_000_000
        fine = wire_bars(pong.needs.fine + 5, step=hour)
        coarse = wire_bars(pong.needs.coarse + 5, step=24 * hour, end=1_700_000_000_000_000_000 - 24 * hour)
        fine["t"] = [t // 10**9 for t in fine["t"]]
        with pytest.raises(RequestFailed) as e:
            c.signal("EURUSD", "1h", coarse, fine)
        assert e.value.code == "invalid_input" and e.value.field == "fine.t", e.value
        assert "3600 ns (times are ns since the epoch)" in str(e.value), e.value


@pytest.mark.parametrize("case", ["hourly bars as daily", "stamped at the exchange's close", "years older",
                                  "a day missing"])
def test_coarse_bars_not_made_as_training_made_them_are_invalid_input_naming_coarse_t(served, case):
    from runtime_fixtures import wire_bars

    hour, midnight = 3_600_000_000_000, 1_699_920_000_000_000_000  # 2023-11-14 00:00 UTC
    with Client(served.address) as c:
        pong = c.ping()
        fine = wire_bars(pong.needs.fine + 5, step=hour, end=midnight + 20 * hour)
        n = pong.needs.coarse + 5
        first_read = f"coarse.t[{n - pong.needs.coarse}]"  # older history than the window reads is not checked
        coarse, field, words = {
            "hourly bars as daily": (wire_bars(n, step=hour, end=midnight + 19 * hour), first_read, "1d period"),
            "stamped at the exchange's close": (wire_bars(n, step=24 * hour, end=midnight - 3 * hour), first_read,
                                                "1d period"),
            "years older": (wire_bars(n, step=24 * hour, end=midnight - 3 * 365 * 24 * hour), "coarse.t",
                            "2023-11-14T00:00:00Z is missing"),
            "a day missing": (wire_bars(n, step=24 * hour, end=midnight - 24 * hour), "coarse.t",
                              "2023-11-14T00:00:00Z is missing"),
        }[case]
        with pytest.raises(RequestFailed) as e:
            c.signal("EURUSD", "1h", coarse, fine)
        assert e.value.code == "invalid_input" and e.value.field == field and words in str(e.value), e.value
        c.signal("EURUSD", "1h", wire_bars(n, step=24 * hour, end=midnight), fine)  # made as training made them


def test_coarse_bars_the_window_ignores_are_not_checked_and_a_long_closure_needs_no_coarse_bar(served):
    from runtime_fixtures import wire_bars

    hour, day, midnight = 3_600_000_000_000, 86_400_000_000_000, 1_699_920_000_000_000_000
    with Client(served.address) as c:
        pong = c.ping()
        n = pong.needs.coarse
        coarse = wire_bars(n, step=day, end=midnight)
        fine = wire_bars(pong.needs.fine, step=hour, end=midnight + 20 * hour)
        forming = {k: v + [v[-1]] for k, v in coarse.items()}
        forming["t"][-1] = midnight + 20 * hour + 30 * 60 * 10**9  # a forming daily bar stamped at the wall clock
        history = {k: [v[0]] * 3 + v for k, v in coarse.items()}
        history["t"][:3] = [midnight - (n + 10) * day + 7 * hour + i * hour for i in range(3)]  # off the grid
        for sent in (forming, history):
            c.signal("EURUSD", "1h", sent, fine)
        # Ten days closed (Golden Week): the fine window spans the closure, its last closed day has its bar.
        before = wire_bars(pong.needs.fine - 3, step=hour, end=midnight - 2 * hour)
        after = wire_bars(3, step=hour, end=midnight + 10 * day + 3 * hour)
        c.signal("EURUSD", "1h", coarse, {k: before[k] + after[k] for k in before})


def test_the_server_decides_what_the_python_api_decides(served, tiny_bundle):
    """Same bars through the server (features -> retrieval -> ONNX -> ACT) and through HRMPolicy (PyTorch):
    same action and segments, forecasts and probabilities within the fp32 export bound."""
    from dualhrq.api import HRMPolicy

    history = eurusd_history(end=-100)
    with Client(served.address, timeout_s=10) as c:
        pong = c.ping()
        reply = c.request(real_signal_body("api", (pong.needs.coarse, pong.needs.fine), history))
    decision = HRMPolicy.from_checkpoint(tiny_bundle.parent / "ckpt").decide(history, "EURUSD", "1h")
    assert isinstance(reply, p.SignalReply)
    assert reply.action == decision.action and reply.act.segments == decision.segments
    np.testing.assert_allclose(reply.probs, decision.probs, atol=1e-4)
    np.testing.assert_allclose([reply.forecast.coarse, reply.forecast.fine],
                               [decision.forecast_coarse, decision.forecast_fine], rtol=1e-3, atol=1e-6)
    assert reply.patterns.used == decision.patterns_used and not reply.patterns.fail_open


def test_bars_the_features_cannot_use_are_invalid_input(served):
    with Client(served.address, timeout_s=10) as c:
        pong = c.ping()
        body = real_signal_body("few", (pong.needs.coarse, pong.needs.fine))
        body["fine"] = {k: v[-5:] for k, v in body["fine"].items()}
        with pytest.raises(RequestFailed) as e:
            c.request(body)
    assert (e.value.code, e.value.field) == ("invalid_input", "fine")


def test_coarse_bars_not_closed_by_the_last_fine_bar_do_not_count_towards_needs(served):
    with Client(served.address, timeout_s=10) as c:
        pong = c.ping()
        needs_ = (pong.needs.coarse, pong.needs.fine)
        body = real_signal_body("early", needs_, eurusd_history(end=-24 * 30))  # fine bars end 30 days earlier
        body["coarse"] = real_signal_body("late", needs_)["coarse"]  # ... than most of these coarse bars
        with pytest.raises(RequestFailed) as e:
            c.request(body)
    assert (e.value.code, e.value.field) == ("invalid_input", "coarse")
    assert "closed by the last fine bar" in str(e.value)


def test_a_signals_bars_are_validated_once_each(served, monkeypatch):
    from dualhrq.data import bars

    checked = []
    rows = bars._clean_rows  # the one pass every validation of clean bars makes
    monkeypatch.setattr(bars, "_clean_rows", lambda t, *columns: checked.append(len(t)) or rows(t, *columns))
    with Client(served.address, timeout_s=10) as c:
        pong = c.ping()
        reply = c.request(real_signal_body("once", (pong.needs.coarse, pong.needs.fine)))
    assert isinstance(reply, p.SignalReply)
    assert sorted(checked) == sorted([pong.needs.coarse + 2, pong.needs.fine + 2])  # the two series, once


def test_the_pattern_window_cannot_change_at_serve_time(tiny_bundle):
    window = load_bundle(tiny_bundle).inputs().artifacts.pattern_window
    with pytest.raises(ConfigurationError, match=f"patterns.window: {window + 4}, but .* trained with {window}"):
        load_host(tiny_bundle, {"patterns": {"window": window + 4}})


def test_the_shipped_serve_config_lays_over_a_bundle(tiny_bundle):
    from pathlib import Path

    from dualhrq.runtime.host import overlay_config, read_overlay

    path = Path(__file__).resolve().parents[1] / "config" / "serve.yaml"
    cfg = overlay_config(load_bundle(tiny_bundle).config, read_overlay(path), str(path))
    assert cfg.serve.bind == "tcp://127.0.0.1:5555" and cfg.patterns.timeout_ms == 2.0
    assert cfg.model == load_bundle(tiny_bundle).config.model


def test_a_hold_carries_quantity_zero_and_a_trade_the_quantity_head(tiny_bundle):
    inputs = load_bundle(tiny_bundle).inputs()
    inputs = dataclasses.replace(inputs, artifacts=msgspec.structs.replace(inputs.artifacts, decision_rule=None))
    heads = {"quantity": np.float32(0.4), "forecast_coarse": np.float32(0), "forecast_fine": np.float32(0),
             "value": np.float32(0), "regime_probs": np.ones(3)}
    for action in ("HOLD", "BUY"):  # without a rule, the argmax
        logits = np.where(np.asarray(p.ACTIONS) == action, 5.0, 0.0)
        d = inputs.decide({**heads, "policy_logits": logits}, 0)
        assert (d.action, d.quantity) == (action, 0.0 if action == "HOLD" else pytest.approx(0.4))
