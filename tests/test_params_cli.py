import json
from pathlib import Path

from dualhrq.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_full_config_is_within_budget(capsys):
    assert main(["params", "--config", str(ROOT / "config/hrm_27m.yaml"), "--strict", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 26_500_000 <= out["total"] <= 27_500_000 and out["violations"] == []
    assert out["components"]["h_module"]["params"] <= 8_500_000
    assert out["components"]["l_module"]["params"] <= 18_000_000


def test_strict_names_the_component_over_its_cap(tmp_path, capsys):
    cfg = tmp_path / "big.yaml"
    cfg.write_text("base: " + str(ROOT / "config/hrm_27m.yaml") + "\nbudget: {h_max: 1000}\n")
    assert main(["params", "--config", str(cfg), "--strict"]) == 1
    assert "h_module" in capsys.readouterr().err


def test_bad_config_exits_with_clear_error(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {h_module: {hidden_dim: 64}}\n")
    assert main(["params", "--config", str(cfg)]) == 2
    assert "model.l_module" in capsys.readouterr().err


def test_a_config_of_half_a_trillion_parameters_is_counted_without_allocating_them(tmp_path, capsys):
    cfg = tmp_path / "giant.yaml"
    cfg.write_text("base: " + str(ROOT / "config/hrm_27m.yaml") + "\nmodel:\n"
                   "  h_module: {hidden_dim: 65536, ffn_dim: 262144, num_layers: 8, num_heads: 8}\n"
                   "  l_module: {hidden_dim: 65536, ffn_dim: 262144, num_layers: 8, num_heads: 8}\n")
    assert main(["params", "--config", str(cfg), "--json"]) == 0  # ~2 TB of float32 were it built
    assert json.loads(capsys.readouterr().out)["total"] > 100_000_000_000
