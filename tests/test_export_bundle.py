"""The bundle: what the manifest records, the loading API, and refusal of changed, missing or extra files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from subcommand import run_subcommand

from dualhrq.config import Config
from dualhrq.contract import INPUT_NAMES, OUTPUT_NAMES
from dualhrq.errors import ConfigurationError, ModelLoadError
from dualhrq.export import parity as parity_module
from dualhrq.export.bundle import load_bundle, verify_bundle
from dualhrq.export.commands import register
from dualhrq.export.inputs import ParityFeeds
from dualhrq.export.parity import ParityError
from dualhrq.export.pipeline import ExportOptions, export_bundle
from dualhrq.export.segment import example_feeds
from dualhrq.features import BAR_FEATURES, FINE_FEATURES, REGIME_FEATURES, ColumnStats, FeatureStats
from dualhrq.hashing import sha256_file
from dualhrq.inputs import Artifacts
from dualhrq.inputs.artifacts import TargetScale
from dualhrq.model import HRM
from dualhrq.patterns.artifacts import save_artifacts
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import PatternLibrary
from dualhrq.patterns.regimes import fit_regimes
from dualhrq.train.checkpoint import WEIGHTS_FILE, save_checkpoint


def _artifacts(cfg: Config) -> Artifacts:
    def column(names):
        return ColumnStats(tuple(names), np.zeros(len(names)), np.ones(len(names)))

    stats = FeatureStats(column(BAR_FEATURES), column(FINE_FEATURES), column(REGIME_FEATURES))
    return Artifacts.of(stats, ["EURUSD"], TargetScale(0.01, 0.002), "1h", "1d", cfg.patterns.window)


OPTIONS = ExportOptions(fp16=True, int8=True, force=True, carry_segments=2)


def _save_patterns(directory, cfg: Config) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 30))
    encoder = PatternEncoder(cfg.patterns.embed_dim).fit(features)
    library = PatternLibrary(encoder.embed_dim, cfg.patterns)
    t = np.arange(120, dtype=np.int64) * 3_600_000_000_000
    library.add(encoder.encode(features), instrument="EURUSD", window_start=t, window_end=t + 1, available_at=t + 2,
                outcome=rng.normal(size=120), regime=0)
    save_artifacts(directory, library, encoder, fit_regimes(rng.normal(size=(120, 20)), 3, seed=0))


@pytest.fixture(scope="module")
def checkpoint(tiny_config, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("bundle") / "ckpt"
    torch.manual_seed(0)
    save_checkpoint(ckpt, HRM(tiny_config.model), tiny_config, step=7)
    _artifacts(tiny_config).save(ckpt)
    _save_patterns(ckpt / "patterns", tiny_config)
    return ckpt


def _feeds(cfg: Config) -> ParityFeeds:
    return ParityFeeds(example_feeds(cfg.model, 8), "synthetic (bundle tests: hashing and manifest only)")


@pytest.fixture(scope="module")
def bundle(checkpoint, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "bundle"
    return export_bundle(checkpoint, out, OPTIONS, feeds=_feeds(tiny_config))


@pytest.fixture
def copy(bundle, tmp_path):
    return shutil.copytree(bundle.bundle, tmp_path / "bundle")


def test_manifest_records_what_the_bundle_holds(bundle, checkpoint, tiny_config):
    m = json.loads((bundle.bundle / "manifest.json").read_text())
    model = HRM(tiny_config.model)
    assert m["param_count"] == sum(p.numel() for p in model.parameters())
    assert (m["n_cycles"], m["t_steps"]) == (tiny_config.model.n_cycles, tiny_config.model.t_steps)
    assert m["act"] == {"min_segments": 1, "max_segments": 3, "fixed_segments": 0}
    assert [v["name"] for v in m["graph"]["inputs"]] == list(INPUT_NAMES)
    assert [v["name"] for v in m["graph"]["outputs"]] == list(OUTPUT_NAMES)
    assert m["graph"]["opset"] >= 18 and m["graph"]["batch_axis"] == "batch"
    assert set(m["precisions"]) == {"fp32", "fp16", "int8"}
    for entry in m["precisions"].values():
        assert set(entry["parity"]) >= {"max_abs_err", "action_agreement", "forecast_corr", "passed"}
    for name, entry in m["precisions"].items():  # every precision: carry parity and ORT's node counts
        assert entry["carry"]["carry_segments"] == 2 and entry["carry"]["precision"] == name
        assert 0 < entry["nodes"]["optimized"] < entry["nodes"]["exported"]
        assert sum(entry["nodes"]["optimized_ops"].values()) == entry["nodes"]["optimized"]
    assert "SimplifiedLayerNormalization" in m["precisions"]["fp32"]["nodes"]["fused"]
    quantization = m["precisions"]["int8"]["quantization"]
    assert quantization["chosen_for"] in ("vnni", "avx2 (no vnni)") and quantization["tried"][-1]["passed"] in (
        True, False) and quantization["scheme"] == quantization["tried"][-1]["scheme"]
    assert m["tensorrt"]["built"] is False and "reason" in m["tensorrt"]
    assert set(m["versions"]) >= {"torch", "onnx", "onnxruntime"}
    assert m["created_at"].endswith("+00:00")
    assert m["source_checkpoint"]["weights_sha256"] == sha256_file(checkpoint / WEIGHTS_FILE)
    assert m["source_checkpoint"]["step"] == 7 and m["model_version"].startswith("hrm-step7-")
    assert m["inputs"] is True and m["format_version"] == 2
    assert m["config"]["model"]["h_module"]["hidden_dim"] == tiny_config.model.h_module.hidden_dim
    on_disk = sorted(p.relative_to(bundle.bundle).as_posix() for p in bundle.bundle.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(m["files"]) == on_disk
    assert {"segment_fp32.onnx", "segment_fp16.onnx", "segment_int8.onnx", "weights.safetensors", "inputs.json",
            "patterns/encoder.json", "patterns/library/index.bin"} <= set(on_disk)
    for name, entry in m["files"].items():
        assert entry["sha256"] == sha256_file(bundle.bundle / name)


def test_loaded_bundle_gives_graphs_carry_weights_and_patterns(bundle, tiny_config):
    b = load_bundle(bundle.bundle)
    assert b.precisions == ("fp32", "fp16", "int8")
    assert b.graph_path("int8").is_file() and b.config.model == tiny_config.model
    assert (b.manifest.n_cycles, b.manifest.t_steps) == (tiny_config.model.n_cycles, tiny_config.model.t_steps)
    z_h, z_l = b.initial_carry(3)
    m = tiny_config.model
    assert z_h.shape == (3, m.coarse_len, m.h_module.hidden_dim) and z_l.shape == (3, m.fine_len, m.l_module.hidden_dim)
    assert z_h.dtype == np.float32 and not z_h.any()
    HRM(b.config.model).load_state_dict(b.state_dict())  # strict: every weight is there
    inputs = b.inputs()
    assert inputs.artifacts == _artifacts(tiny_config) and inputs.instruments.names() == ["EURUSD"]
    assert len(inputs.library) == 120
    with pytest.raises(ConfigurationError, match="precision"):
        b.graph_path("int4")


def test_one_flipped_byte_is_refused(copy):
    graph = copy / "segment_fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="segment_fp32.onnx: SHA-256 does not match"):
        load_bundle(copy)
    report = verify_bundle(copy)
    assert not report.ok and [c.name for c in report.checks if c.status == "changed"] == ["segment_fp32.onnx"]


def test_missing_or_extra_files_are_refused(copy):
    (copy / "patterns" / "encoder.json").unlink()
    with pytest.raises(ModelLoadError, match="encoder.json: listed in the manifest but missing"):
        load_bundle(copy)
    shutil.copy(copy / "patterns" / "regimes.json", copy / "patterns" / "encoder.json")
    with pytest.raises(ModelLoadError, match="encoder.json: SHA-256"):
        load_bundle(copy)
    (copy / "patterns" / "encoder.json").unlink()
    (copy / "notes.txt").write_text("hello")
    problems = verify_bundle(copy).problems
    assert any("notes.txt: not listed in the manifest" in p for p in problems)


def _cli(*argv: str) -> int:
    return run_subcommand(register, *argv)


def test_bundle_verify_command_reports_and_sets_the_exit_status(copy, capsys):
    assert _cli("bundle", "verify", str(copy)) == 0
    assert "OK" in capsys.readouterr().out
    weights = copy / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert _cli("bundle", "verify", str(copy)) == 1
    out = capsys.readouterr().out
    assert "changed weights.safetensors" in out.replace("  ", " ") and "REFUSED" in out


def test_a_variant_missing_its_bound_is_dropped_unless_forced(checkpoint, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(parity_module, "MIN_FORECAST_CORR", 1.01)  # no reduced precision can pass this
    dropped = export_bundle(checkpoint, tmp_path / "b", ExportOptions(fp16=True), feeds=_feeds(tiny_config))
    entry = dropped.manifest.precisions["fp16"]
    assert entry.file is None and not entry.passed and not entry.forced
    assert not (dropped.bundle / "segment_fp16.onnx").exists()
    assert any("fp16 missed its parity bound" in w for w in dropped.warnings)
    b = load_bundle(dropped.bundle)
    assert b.precisions == ("fp32",)
    with pytest.raises(ModelLoadError, match="no fp16 graph"):
        b.graph_path("fp16")

    kept = export_bundle(checkpoint, tmp_path / "b", ExportOptions(fp16=True, force=True), feeds=_feeds(tiny_config))
    entry = kept.manifest.precisions["fp16"]
    assert entry.file == "segment_fp16.onnx" and not entry.passed and entry.forced
    assert entry.parity["failures"] and load_bundle(kept.bundle).precisions == ("fp32", "fp16")


def test_fp32_miss_aborts_and_leaves_no_bundle(checkpoint, tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(parity_module, "FP32_MAX_ABS_ERR", 0.0)
    with pytest.raises(ParityError, match="does not reproduce PyTorch"):
        export_bundle(checkpoint, tmp_path / "b", ExportOptions(), feeds=_feeds(tiny_config))
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its staging directory


def test_out_that_is_not_a_bundle_is_left_alone(checkpoint, tiny_config, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigurationError, match="not a bundle"):
        export_bundle(checkpoint, tmp_path, ExportOptions(), feeds=_feeds(tiny_config))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_corrupted_pattern_library_is_refused_before_packing(checkpoint, tiny_config, tmp_path):
    patterns = shutil.copytree(checkpoint / "patterns", tmp_path / "patterns")
    (patterns / "library" / "index.bin").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="index.bin"):
        export_bundle(checkpoint, tmp_path / "b", ExportOptions(patterns=patterns), feeds=_feeds(tiny_config))


def test_a_bundle_of_another_format_is_refused_with_its_format_number(copy):
    manifest = copy / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "format_version": 1, "extra": {}}))
    with pytest.raises(ModelLoadError, match="format 1, this version of dualhrq reads format 2; re-export"):
        load_bundle(copy, verify=False)


def test_a_manifest_field_of_the_wrong_type_is_named(copy):
    manifest = copy / "manifest.json"
    m = json.loads(manifest.read_text())
    m["precisions"]["fp32"]["passed"] = "yes"
    manifest.write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match=r"Expected `bool`, got `str` - at `\$\.precisions\[...\]\.passed`"):
        load_bundle(copy, verify=False)
    m["precisions"]["fp32"]["passed"] = True
    manifest.write_text(json.dumps({**m, "surprise": 1}))
    with pytest.raises(ModelLoadError, match="surprise"):
        load_bundle(copy, verify=False)


def test_input_artifacts_with_a_bad_field_are_refused_by_name(copy):
    inputs = copy / "inputs.json"
    a = json.loads(inputs.read_text())
    inputs.write_text(json.dumps({**a, "target_scale": {"out_a": "wide", "out_b": 1.0}}))
    with pytest.raises(ModelLoadError, match=r"inputs.json: .*\$\.target_scale\.out_a"):
        load_bundle(copy, verify=False).inputs()
