"""One definition of the settings that change a prediction (dualhrq.config.prediction_settings) under the run
ledger's config hash, the saved splits' fingerprints and the HRM's per-split model keys: serving, compliance,
budget, tracking, logging and reporting settings change none of them; model and training settings change all."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
from test_validate_report import Scripted, config, recording, synthetic

from dualhrq.config import Config, load_config, prediction_settings
from dualhrq.evaluate.hrm_predictor import HRMPredictor
from dualhrq.evaluate.ledger import config_hash
from dualhrq.evaluate.validate import load_validation_data, run_validation

ROOT = Path(__file__).resolve().parents[1]

NO_PREDICTION = [("serve", {"bind": "tcp://127.0.0.1:6001"}), ("validate", {"bootstrap_reps": 77}),
                 ("train", {"log_every": 3}), ("compliance", {"enabled": False}),
                 ("budget", {"total_max": 3_000_000}), ("tracking", {"experiment": "elsewhere"})]
PREDICTION = [("train", {"lr": 2e-3}), ("model", {"n_cycles": 3})]


def changed(cfg: Config, section: str, fields: dict) -> Config:
    return msgspec.structs.replace(cfg, **{section: msgspec.structs.replace(getattr(cfg, section), **fields)})


@pytest.mark.parametrize(("section", "fields"), NO_PREDICTION)
def test_a_setting_that_changes_no_prediction_changes_no_identity(tiny_config, section, fields):
    other = changed(tiny_config, section, fields)
    assert prediction_settings(other) == prediction_settings(tiny_config)
    assert config_hash(other) == config_hash(tiny_config)


@pytest.mark.parametrize(("section", "fields"), PREDICTION)
def test_a_model_or_training_setting_changes_every_identity(tiny_config, section, fields):
    other = changed(tiny_config, section, fields)
    assert prediction_settings(other) != prediction_settings(tiny_config)
    assert config_hash(other) != config_hash(tiny_config)


def test_the_split_definition_is_a_trial_of_its_own_but_no_setting_of_the_model(tiny_config):
    other = changed(tiny_config, "validate", {"train_bars": 300})
    assert prediction_settings(other) == prediction_settings(tiny_config)
    assert config_hash(other) != config_hash(tiny_config)


def test_a_resumed_validation_keeps_its_splits_unless_a_prediction_setting_changed(tiny_config, tmp_path):
    data = synthetic()
    cfg = config(tiny_config, permuted_control_splits=0)
    run_validation(cfg, data, [lambda d, _: Scripted(d)], tmp_path, progress=False)
    seen: list[Scripted] = []
    for section, fields in NO_PREDICTION:
        run_validation(changed(cfg, section, fields), data, [recording(seen)], tmp_path, progress=False)
    assert [s.fits for s in seen] == [[]] * len(NO_PREDICTION), "every saved split was reused"
    run_validation(changed(cfg, "train", {"lr": 2e-3}), data, [recording(seen)], tmp_path, progress=False)
    assert len(seen[-1].fits) == 3


def test_the_hrm_finds_its_trained_split_model_whatever_serving_and_reporting_say(tmp_path):
    cfg = load_config(ROOT / "config" / "train_eurusd.yaml")
    cfg = changed(cfg, "train", {"steps": 2, "batch_size": 8, "device": "cpu"})
    data = load_validation_data(cfg)
    train_idx = np.arange(0, 1000)
    state = HRMPredictor(cfg, data, tmp_path, "hrm").fit(train_idx, None)
    for section, fields in (("serve", {"bind": "tcp://127.0.0.1:6001"}), ("validate", {"bootstrap_reps": 77})):
        assert HRMPredictor(changed(cfg, section, fields), data, tmp_path, "hrm").fit(train_idx, None) == state
    assert len(list(tmp_path.iterdir())) == 1, "no split model was trained twice"
