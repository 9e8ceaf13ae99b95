"""Bad input to the CLI and its configs: every case is refused before any work, with an error that names the
option, field or file (exit status 2), never a traceback, a silent wrong result or a write where none belongs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from dualhrq.cli import main
from dualhrq.config import Config, config_from_dict, load_config, merge_sections, read_yaml
from dualhrq.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "config" / "hrm_tiny.yaml"


def write_config(tmp_path: Path, sections: dict[str, Any], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": str(TINY), **sections}))
    return path


def refused_by_argparse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's exit (status 2) for ``argv``; its stderr."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------- 1. config floats


def _float_fields(kind: type, path: str = "") -> list[str]:
    """The key path of every float field of the config, however deeply nested (optional ones, a mapping's)."""
    out = []
    for field in msgspec.inspect.type_info(kind).fields:
        where = f"{path}.{field.name}" if path else field.name
        types = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        for t in types:
            if isinstance(t, msgspec.inspect.FloatType) or (
                    isinstance(t, msgspec.inspect.DictType) and isinstance(t.value_type, msgspec.inspect.FloatType)):
                out.append(where)
            elif isinstance(t, msgspec.inspect.StructType):
                out += _float_fields(t.cls, where)
    return out


def _with(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    *parents, name = path.split(".")
    over: dict[str, Any] = {name: value}
    for parent in reversed(parents):
        over = {parent: over}
    return merge_sections(data, over)


def test_every_float_field_of_the_config_refuses_nan_and_infinity_naming_its_path():
    fields = _float_fields(Config)
    assert {"model.norm_eps", "model.quantity_min", "validate.execution.fee_bps", "train.loss_weights"} <= set(fields)
    tiny = read_yaml(TINY)
    for path in fields:
        is_mapping = path == "train.loss_weights"
        for bad in (float("nan"), float("inf"), float("-inf")):
            data = _with(tiny, path, {"policy": bad} if is_mapping else bad)
            with pytest.raises(ConfigurationError) as err:
                config_from_dict(data, "c.yaml")
            message = str(err.value)
            parent, _, name = path.rpartition(".")
            # quantity_min: +inf meets the cross-field check (quantity_max > quantity_min) first, which names both
            named = message.startswith(f"c.yaml: {path}")
            assert named or (message.startswith(f"c.yaml: {parent}: ") and name in message), message


def test_an_infinite_norm_eps_is_refused_by_the_cli_naming_model_norm_eps(tmp_path, capsys):
    config = write_config(tmp_path, {"model": {"norm_eps": float("inf")}})
    assert main(["params", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"error: {config}: model.norm_eps: expected a finite number, got inf" in err and "Traceback" not in err


def test_a_nan_quantity_min_is_refused_naming_model_quantity_min_not_train_lr(tmp_path):
    with pytest.raises(ConfigurationError, match=r"c\.yaml: model\.quantity_min: expected a finite number, got nan"):
        load_config(write_config(tmp_path, {"model": {"quantity_min": float("nan")}}))


def test_finite_floats_keep_their_range_checks_and_load(tmp_path):
    with pytest.raises(ConfigurationError, match=r"train\.lr: expected float > 0"):
        load_config(write_config(tmp_path, {"train": {"lr": -1.0}}))
    cfg = load_config(write_config(tmp_path, {"model": {"norm_eps": 1e-6, "quantity_min": -1.0}}))
    assert (cfg.model.norm_eps, cfg.model.quantity_min) == (1e-6, -1.0)


# ---------------------------------------------------------------- 2. ports


@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_serve_refuses_a_metrics_port_outside_0_to_65535_naming_the_flag(capsys, port):
    err = refused_by_argparse(["serve", "--bundle", "b", "--metrics-port", port], capsys)
    assert "--metrics-port" in err


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:99999", "tcp://127.0.0.1:65536", "tcp://127.0.0.1:-1"])
def test_serve_refuses_a_bind_port_that_zeromq_would_wrap_round_naming_the_flag(capsys, address):
    err = refused_by_argparse(["serve", "--bundle", "b", "--bind", address], capsys)
    assert "--bind" in err and "out of range 0-65535" in err


def test_port_zero_binds_any_free_port_but_not_where_the_control_bus_ports_follow(capsys):
    from dualhrq.config import tcp_port_problem

    assert tcp_port_problem("tcp://127.0.0.1:0") is None  # ZeroMQ picks a free port, as for `*`
    assert "out of range 1-65533" in refused_by_argparse(["broker", "--backend", "tcp://127.0.0.1:0"], capsys)


def test_broker_and_worker_addresses_leave_room_for_the_control_bus_ports(capsys):
    assert "--backend" in refused_by_argparse(["broker", "--backend", "tcp://127.0.0.1:65534"], capsys)
    assert "--connect" in refused_by_argparse(["serve", "--bundle", "b", "--connect", "tcp://h:99999"], capsys)
    assert "--bind" in refused_by_argparse(["broker", "--bind", "tcp://127.0.0.1:99999"], capsys)


def test_a_serve_config_with_an_out_of_range_port_is_refused_naming_the_field(tmp_path, tiny_config):
    from dualhrq.runtime.host import overlay_config, read_overlay

    serve_yaml = tmp_path / "serve.yaml"
    for serve, match in (({"metrics_port": 70000}, r"serve\.metrics_port: expected int <= 65535"),
                         ({"bind": "tcp://127.0.0.1:99999"}, r"serve: bind: port 99999 .* out of range 0-65535")):
        serve_yaml.write_text(yaml.safe_dump({"serve": serve}))
        with pytest.raises(ConfigurationError, match=rf"{serve_yaml}: {match}"):
            overlay_config(tiny_config, read_overlay(serve_yaml), str(serve_yaml))


def test_local_workers_need_room_for_their_metrics_ports_after_serve_metrics_port(tiny_config):
    from dualhrq.runtime.commands import _check_worker_ports
    from dualhrq.runtime.host import overlay_config

    serve = overlay_config(tiny_config, {"serve": {"metrics_port": 65534, "workers": 2}}, "serve.yaml").serve
    with pytest.raises(ConfigurationError, match=r"serve\.yaml: serve\.metrics_port: 65534 leaves no room"):
        _check_worker_ports(serve, "serve.yaml")
    _check_worker_ports(msgspec.structs.replace(serve, metrics_port=65533), "serve.yaml")


def test_valid_bind_addresses_and_ports_still_load(tiny_config):
    from dualhrq.runtime.host import overlay_config

    for serve in ({"bind": "tcp://127.0.0.1:65535", "metrics_port": 9100}, {"bind": "tcp://127.0.0.1:*"},
                  {"bind": "ipc:///tmp/dualhrq.sock"}, {"bind": "tcp://0.0.0.0:1", "metrics_port": 0}):
        assert overlay_config(tiny_config, {"serve": serve}, "x").serve.bind == serve["bind"]


# ---------------------------------------------------------------- 3. export options


def test_export_refuses_an_opset_above_what_torch_onnx_exports_naming_the_flag(capsys):
    from dualhrq.export.commands import MAX_OPSET

    for opset in ("99", str(MAX_OPSET + 1), "17"):
        err = refused_by_argparse(["export", "--checkpoint", "c", "--out", "o", "--opset", opset], capsys)
        assert "--opset" in err and f"18..{MAX_OPSET}" in err


def test_the_opset_maximum_is_the_one_this_torch_onnx_exporter_supports(tmp_path, tiny_config):
    import onnx
    import torch.onnx._constants as torch_onnx

    from dualhrq.export.commands import MAX_OPSET
    from dualhrq.export.segment import export_segment
    from dualhrq.model import HRM

    assert MAX_OPSET == torch_onnx.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    path = export_segment(HRM(tiny_config.model), tmp_path / "g.onnx", opset=MAX_OPSET)
    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) == MAX_OPSET


@pytest.mark.parametrize("flag,value", [("--threads", "-1"), ("--workspace-mb", "-1"), ("--workspace-mb", "0")])
def test_export_refuses_a_negative_thread_count_or_workspace_naming_the_flag(capsys, flag, value):
    assert flag in refused_by_argparse(["export", "--checkpoint", "c", "--out", "o", flag, value], capsys)


# ---------------------------------------------------------------- 4. validate --candidate


def test_an_unknown_candidate_is_refused_before_any_data_is_read_listing_the_valid_names(tmp_path, capsys,
                                                                                           monkeypatch):
    import dualhrq.evaluate.validate as validate

    def no_work(*args: object) -> None:
        raise AssertionError("validation started")

    monkeypatch.setattr(validate, "load_validation_data", no_work)
    monkeypatch.setattr(validate, "load_validation_panel", no_work)
    out = tmp_path / "out"
    assert main(["validate", "--config", str(TINY), "--out", str(out), "--candidate", "hmr", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--candidate: no predictor 'hmr'" in err and "hrm, buy_and_hold, momentum" in err
    assert not out.exists()


def test_the_candidate_names_are_the_predictors_validation_builds():
    from test_validate_report import synthetic

    from dualhrq.evaluate.commands import predictor_names
    from dualhrq.evaluate.validate import baseline_factories

    cfg = load_config(TINY)
    data = synthetic()
    built = [factory(data, Path("unused")).name for factory in baseline_factories(cfg.validate)]
    assert predictor_names(cfg, False, 1) == ["hrm", *built]
    assert predictor_names(cfg, True, 3)[:4] == ["hrm", "hrm_regime_only", "hrm_seed1", "hrm_seed2"]


# ---------------------------------------------------------------- 5. runs --ledger


def _snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_runs_refuses_a_sqlite_file_that_is_no_run_ledger_and_leaves_it_unchanged(tmp_path, capsys):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE foo (x)")
    db.close()
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path in (other, empty):
        before = _snapshot(path)
        assert main(["runs", "--ledger", str(path)]) == 2
        assert f"error: --ledger: {path}: not a run ledger" in capsys.readouterr().err
        assert _snapshot(path) == before


def test_train_and_validate_never_write_the_ledger_tables_into_another_database(tmp_path):
    from dualhrq.evaluate.ledger import Ledger

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE foo (x)")
    db.close()
    before = _snapshot(other)
    with pytest.raises(ConfigurationError, match=f"tracking.ledger: {other}: not a run ledger"):
        Ledger(other)
    assert _snapshot(other) == before


def test_a_writer_creates_a_new_ledger_that_runs_then_lists_without_changing_it(tmp_path, capsys):
    from dualhrq.evaluate.ledger import Ledger, RunRecord

    path = tmp_path / "new" / "ledger.sqlite"
    with Ledger(path) as ledger:
        ledger.append(RunRecord("train", "c1", "data", "d", 0, "run", {"step": 3}))
    empty = tmp_path / "empty.sqlite"
    empty.touch()  # an empty file is an empty database: a writer may start a ledger there
    with Ledger(empty) as ledger:
        assert ledger.runs() == []
    before = _snapshot(path)
    assert main(["runs", "--ledger", str(path)]) == 0
    assert "step 3" in capsys.readouterr().out
    assert _snapshot(path) == before


# ---------------------------------------------------------------- 6. keys generate --name


@pytest.mark.parametrize("name", ["../escape", "ABSOLUTE", "", ".hidden", "sub/name"])
def test_keys_generate_refuses_a_name_that_is_no_plain_file_name_and_writes_nothing(tmp_path, capsys, name):
    name = str(tmp_path / "abs" / "k") if name == "ABSOLUTE" else name
    out = tmp_path / "keys"
    assert main(["keys", "generate", "--out", str(out), "--name", name]) == 2
    err = capsys.readouterr().err
    assert f"error: --name: {name!r}: expected a plain file name" in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.key*"))
