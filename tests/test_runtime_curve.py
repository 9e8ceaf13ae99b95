"""CURVE: allowed keys are served, unknown keys get nothing at all, admin keys may administer."""

from __future__ import annotations

import shutil

import pytest
from runtime_fixtures import ServerThread, fake_host

from dualhrq.config import CurveConfig, ServeConfig
from dualhrq.errors import ConfigurationError
from dualhrq.runtime.client import Client, RequestFailed, RequestTimeout
from dualhrq.runtime.security import ClientKeys, CurveServer, generate_keys
from dualhrq.runtime.server import Server


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    made = {name: generate_keys(root / name, name) for name in ("server", "gateway", "admin", "stranger")}
    allowed, admins = root / "allowed", root / "admins"
    allowed.mkdir()
    admins.mkdir()
    for name in ("gateway", "admin"):
        shutil.copy(made[name][0], allowed)
    shutil.copy(made["admin"][0], admins)
    return made, CurveConfig(server_secret_key_file=str(made["server"][1]), allowed_clients_dir=str(allowed),
                             admin_keys_dir=str(admins))


@pytest.fixture(scope="module")
def served(keys, tiny_config):
    _, curve = keys
    serve = ServeConfig(bind="tcp://127.0.0.1:*", curve=curve, admin_tokens=["tok"], drain_timeout_s=1.0)
    with ServerThread(Server(serve, lambda path, hooks: fake_host(tiny_config, hooks), "b")) as st:
        yield st


def client(keys, name: str, address: str, **kw) -> Client:
    made, _ = keys
    return Client(address, curve=ClientKeys.from_files(made["server"][0], made[name][1]), **kw)


def test_an_allowed_client_key_is_served(keys, served):
    with client(keys, "gateway", served.address) as c:
        assert c.ping().ready


def test_an_unknown_client_key_gets_no_reply_at_all(keys, served):
    with client(keys, "stranger", served.address, timeout_s=0.5, retries=1) as c, pytest.raises(RequestTimeout):
        c.ping()


def test_a_client_without_curve_gets_no_reply(served):
    with Client(served.address, timeout_s=0.5, retries=0) as c, pytest.raises(RequestTimeout):
        c.ping()


def test_an_admin_key_may_administer_without_a_token(keys, served):
    with client(keys, "admin", served.address) as c:
        assert c.admin("stats").ok


def test_a_gateway_key_is_not_an_admin_key(keys, served):
    with client(keys, "gateway", served.address) as c:
        with pytest.raises(RequestFailed) as e:
            c.admin("kill_switch_on")
        assert e.value.code == "unauthorized"
        assert c.admin("stats", token="tok").ok  # the token still works over CURVE


def test_keys_are_never_overwritten(keys):
    made, _ = keys
    with pytest.raises(ConfigurationError, match="exists"):
        generate_keys(made["server"][0].parent, "server")


def test_half_configured_curve_is_a_clear_error(keys):
    made, _ = keys
    with pytest.raises(ConfigurationError, match="allowed_clients_dir"):
        CurveServer(CurveConfig(server_secret_key_file=str(made["server"][1])))
    with pytest.raises(ConfigurationError, match="server_secret_key_file"):
        CurveServer(CurveConfig(allowed_clients_dir="/tmp"))


def test_a_worker_connected_to_a_broker_drops_curve_since_the_broker_holds_the_keys(keys):
    from dualhrq.runtime.backend import BackendKeys

    _, curve = keys
    serve = ServeConfig(bind="tcp://127.0.0.1:*", curve=curve)
    assert Server(serve, lambda path, hooks: None, "b")._curve.enabled
    keys = BackendKeys.derive(b"k" * 32)  # the hop to the broker has its own keys, derived from the control key
    assert not Server(serve, lambda path, hooks: None, "b", connect="tcp://127.0.0.1:1", backend_keys=keys)._curve.enabled


def test_a_key_file_that_is_not_a_certificate_is_a_configuration_error_naming_the_setting_and_file(keys, tmp_path):
    made, curve = keys
    allowed = tmp_path / "allowed"
    shutil.copytree(curve.allowed_clients_dir, allowed)
    (allowed / "broken.key").write_text("this is not a certificate\n")
    bad = CurveConfig(server_secret_key_file=str(made["server"][1]), allowed_clients_dir=str(allowed))
    with pytest.raises(ConfigurationError, match="serve.curve.allowed_clients_dir: .*broken.key"):
        CurveServer(bad)
