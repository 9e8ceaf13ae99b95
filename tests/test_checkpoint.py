import json

import pytest
import torch

from dualhrq.errors import ModelLoadError
from dualhrq.model import HRM, ModelInputs
from dualhrq.train.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint


@pytest.fixture()
def saved(tmp_path, tiny_config):
    torch.manual_seed(0)
    m = HRM(tiny_config.model).eval()
    save_checkpoint(tmp_path / "ck", m, tiny_config, step=12, metrics={"loss": 1.5}, val_cross_entropy=0.75)
    return m, tmp_path / "ck"


def test_round_trip_is_bit_exact(saved, tiny_config):
    m, d = saved
    loaded, meta = load_checkpoint(d)
    assert meta.step == 12 and meta.metrics == {"loss": 1.5} and meta.val_cross_entropy == 0.75
    x = ModelInputs.random(tiny_config.model, 2)
    a, b = m(x, m.initial_carry(2))[1], loaded(x, loaded.initial_carry(2))[1]
    for name in ("policy_logits", "quantity", "value", "q_logits", "forecast_coarse", "forecast_fine"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_grown_vocabulary_survives_round_trip(tmp_path, tiny_config):
    m = HRM(tiny_config.model)
    m.grow_instruments(tiny_config.model.instrument_vocab + 3)
    save_checkpoint(tmp_path, m, tiny_config)
    loaded, _ = load_checkpoint(tmp_path)
    assert loaded.input.instrument.num_embeddings == tiny_config.model.instrument_vocab + 3


@pytest.mark.parametrize("missing", [WEIGHTS_FILE, META_FILE])
def test_missing_file_is_named(saved, missing):
    _, d = saved
    (d / missing).unlink()
    with pytest.raises(ModelLoadError, match=f"missing {missing}"):
        load_checkpoint(d)


def test_a_checkpoint_path_that_does_not_exist_says_so_not_that_a_file_in_it_is_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "typo")


def test_corrupted_weights_are_refused(saved):
    _, d = saved
    raw = bytearray((d / WEIGHTS_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match="corrupted"):
        load_checkpoint(d)


def test_config_weight_mismatch_is_refused(saved):
    _, d = saved
    meta = json.loads((d / META_FILE).read_text())
    meta["config"]["model"]["l_module"]["ffn_dim"] += 8
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="do not match the config"):
        load_checkpoint(d)


def test_garbage_metadata_is_refused(saved):
    _, d = saved
    (d / META_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match="checkpoint.json: not a CheckpointMeta JSON file"):
        load_checkpoint(d)


def test_metadata_of_another_format_is_refused_with_its_format_number(saved):
    _, d = saved
    meta = json.loads((d / META_FILE).read_text())
    (d / META_FILE).write_text(json.dumps({**meta, "format_version": 1, "extra": {}}))
    with pytest.raises(ModelLoadError, match="format 1, this version of dualhrq reads format 2; .* retrain"):
        load_checkpoint(d)


def test_a_metadata_field_of_the_wrong_type_is_named(saved):
    _, d = saved
    meta = json.loads((d / META_FILE).read_text())
    (d / META_FILE).write_text(json.dumps({**meta, "step": "twelve"}))
    with pytest.raises(ModelLoadError, match=r"\$\.step"):
        load_checkpoint(d)
    meta["config"]["model"]["h_module"]["hidden_dim"] = -1
    (d / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match=r"\$\.config\.model\.h_module\.hidden_dim"):
        load_checkpoint(d)
