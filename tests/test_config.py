from pathlib import Path

import pytest

from dualhrq.config import config_from_dict, config_to_dict, load_config
from dualhrq.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_shipped_configs_load_with_sequence_defaults():
    for name in ("hrm_27m.yaml", "hrm_tiny.yaml"):
        cfg = load_config(ROOT / "config" / name)
        assert cfg.model.coarse_len == 20 and cfg.model.fine_len == 48


def test_out_of_range_value_names_file_and_key_path(tmp_path):
    p = write(tmp_path, "model: {h_module: {hidden_dim: 64}, l_module: {hidden_dim: 2}}")
    with pytest.raises(ConfigurationError, match=r"c\.yaml: model\.l_module\.hidden_dim: expected int >= 8"):
        load_config(p)


def test_wrong_type_names_key_path(tmp_path):
    p = write(tmp_path, "model: {h_module: {hidden_dim: 64}, l_module: {hidden_dim: 64}, n_cycles: two}")
    with pytest.raises(ConfigurationError, match=r"model\.n_cycles: expected int, got str"):
        load_config(p)


def test_a_float_written_without_its_point_is_a_number(tmp_path):
    """YAML 1.1 (PyYAML's default) reads `1e-3` as a string, which the config would refuse as not a float."""
    p = write(tmp_path, "model: {h_module: {hidden_dim: 64}, l_module: {hidden_dim: 64}}\ntrain: {lr: 1e-3, weight_decay: 5E-2}")
    cfg = load_config(p)
    assert (cfg.train.lr, cfg.train.weight_decay) == (0.001, 0.05)


def test_unknown_key_is_rejected_with_its_path(tmp_path):
    p = write(tmp_path, "model: {h_module: {hidden_dim: 64}, l_module: {hidden_dim: 64}}\nserve: {bindd: x}")
    with pytest.raises(ConfigurationError, match=r"serve\.bindd: unknown key"):
        load_config(p)


def test_cross_field_check_names_section(tmp_path):
    p = write(tmp_path, "model: {h_module: {hidden_dim: 66, num_heads: 4}, l_module: {hidden_dim: 64}}")
    with pytest.raises(ConfigurationError, match=r"model: .*divisible by num_heads"):
        load_config(p)


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigurationError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed"))


def test_base_file_is_merged_under_the_overrides(tmp_path):
    write(tmp_path, "model: {h_module: {hidden_dim: 64}, l_module: {hidden_dim: 64}}\ntrain: {steps: 5}", "b.yaml")
    cfg = load_config(write(tmp_path, "base: b.yaml\ntrain: {lr: 0.01}"))
    assert cfg.train.steps == 5 and cfg.train.lr == 0.01 and cfg.model.h_module.hidden_dim == 64


def test_a_base_that_names_a_shipped_config_is_found_from_any_directory_and_a_missing_one_named(tmp_path):
    cfg = load_config(write(tmp_path, "base: train_eurusd\ntrain: {steps: 7}"))
    assert cfg.train.steps == 7 and cfg.data == load_config("train_eurusd").data
    bad = write(tmp_path, "base: nope.yaml", "bad.yaml")
    with pytest.raises(ConfigurationError, match=f"{bad}: base: {tmp_path / 'nope.yaml'} is not a file"):
        load_config(bad)


def test_round_trip_through_plain_dict(tiny_config):
    assert config_from_dict(config_to_dict(tiny_config)) == tiny_config


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
    from dualhrq.config import SHIPPED_CONFIGS

    monkeypatch.chdir(tmp_path)  # nothing named config/ here
    assert load_config("train_eurusd") == load_config("train_eurusd.yaml") == load_config(
        SHIPPED_CONFIGS / "train_eurusd.yaml")
    with pytest.raises(ConfigurationError, match="nor a shipped config: hrm_27m, hrm_tiny"):
        load_config("train_nowhere")
