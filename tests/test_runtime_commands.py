"""The runtime's commands as the CLI mounts them: serve, broker, keys generate."""

from __future__ import annotations

import argparse

import pytest
import yaml

from dualhrq.errors import ConfigurationError
from dualhrq.runtime import commands
from dualhrq.runtime.backend import BrokerAddresses


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dualhrq")
    commands.register(parser.add_subparsers(required=True))
    return parser.parse_args(argv)


def test_keys_generate_writes_a_public_and_a_private_key(tmp_path, capsys):
    args = parse("keys", "generate", "--out", str(tmp_path), "--name", "gateway-1")
    assert args.func(args) == 0
    assert (tmp_path / "gateway-1.key").is_file() and (tmp_path / "gateway-1.key_secret").is_file()
    assert (tmp_path / "gateway-1.key_secret").stat().st_mode & 0o077 == 0  # secret: owner only
    assert "gateway-1.key" in capsys.readouterr().out


def test_serve_flags_win_over_the_config_file(tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"serve": {"bind": "tcp://127.0.0.1:6000", "workers": 1, "max_batch": 4},
                                      "patterns": {"timeout_ms": 3.0}}))
    args = parse("serve", "--bundle", "b", "--config", str(config), "--bind", "tcp://127.0.0.1:7000",
                 "--workers", "3", "--metrics-port", "9100")
    overlay, source = commands._overlay(args)
    assert overlay["serve"] == {"bind": "tcp://127.0.0.1:7000", "workers": 3, "max_batch": 4, "metrics_port": 9100}
    assert overlay["patterns"] == {"timeout_ms": 3.0} and source == str(config)


def test_serve_help_explains_readiness_and_shutdown(capsys):
    with pytest.raises(SystemExit):
        parse("serve", "--help")
    out = capsys.readouterr().out
    assert "--workers" in out and "--connect" in out and "SIGTERM" in out and "ready" in out


def test_a_remote_broker_keeps_its_control_bus_on_the_next_two_ports():
    a = BrokerAddresses.remote("tcp://10.0.0.5:5556", frontend="tcp://0.0.0.0:5555")
    assert (a.backend, a.control_in, a.control_out) == ("tcp://10.0.0.5:5556", "tcp://10.0.0.5:5557",
                                                        "tcp://10.0.0.5:5558")
    with pytest.raises(ConfigurationError, match="tcp://HOST:PORT"):
        BrokerAddresses.remote("ipc:///tmp/x")


def test_a_broker_config_with_a_bad_curve_section_is_a_configuration_error_naming_the_file(tmp_path):
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump({"serve": {"curve": {"allowed_clients_dir": 5}}}))
    with pytest.raises(ConfigurationError, match=rf"{config}: serve: .*curve.allowed_clients_dir"):
        commands._broker_curve(str(config))
    config.write_text(yaml.safe_dump({"serve": {"curve": {"allowed_client_dir": "typo"}}}))
    with pytest.raises(ConfigurationError, match=rf"{config}: serve: .*allowed_client_dir"):
        commands._broker_curve(str(config))
    config.write_text(yaml.safe_dump({"serve": {"curve": {"admin_keys_dir": "admins"}}}))
    assert commands._broker_curve(str(config)).admin_keys_dir == "admins"


def test_a_broker_on_the_network_and_its_workers_need_a_shared_control_key(monkeypatch):
    monkeypatch.delenv(commands.CONTROL_KEY_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=f"{commands.CONTROL_KEY_ENV}: unset"):
        commands._control_key()
    monkeypatch.setenv(commands.CONTROL_KEY_ENV, "short")
    with pytest.raises(ConfigurationError, match="shorter than 16"):
        commands._control_key()
    monkeypatch.setenv(commands.CONTROL_KEY_ENV, "0123456789abcdef0123")
    assert commands._control_key() == b"0123456789abcdef0123"
