"""A briefly trained tiny HRM on real EURUSD hourly bars: it reads the newest bar, and it learns more than the
label frequencies (the order-blind model of before scored the frequency-only cross-entropy)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import msgspec
import pytest
import torch

from dualhrq.config import load_config
from dualhrq.train.act import act_inference
from dualhrq.train.distributed import DistContext
from dualhrq.train.evaluation import LabelBaselines, evaluate
from dualhrq.train.inputs import prepare_training
from dualhrq.train.loop import new_trainer, run

ROOT = Path(__file__).resolve().parents[1]
STEPS = 300  # a fraction of the shipped schedule: enough to leave the label frequencies behind


@pytest.fixture(scope="module")
def trained():
    cfg = load_config(ROOT / "config" / "train_eurusd.yaml")
    cfg = msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, device="cpu", steps=STEPS))
    prepared = prepare_training(cfg)
    trainer = new_trainer(cfg, prepared.train, DistContext(0, 1, torch.device("cpu")), STEPS)
    run(trainer, STEPS, None, progress=False)
    return cfg, trainer.model.eval(), prepared


def _policy(model, cfg, inputs) -> torch.Tensor:
    return torch.softmax(act_inference(model, inputs, cfg.act).outputs.policy_logits, dim=-1)


def test_changing_the_newest_fine_bar_moves_the_policy_10x_more_than_the_oldest(trained):
    cfg, model, prepared = trained
    x = prepared.test.inputs
    base = _policy(model, cfg, x)
    # The same change for both ends: each token's features shifted by one (normalised) std.
    moved = {}
    for name, pos in (("newest", -1), ("oldest", 0)):
        tokens = x.l_tokens.clone()
        tokens[:, pos] += 1.0
        moved[name] = float((_policy(model, cfg, replace(x, l_tokens=tokens)) - base).abs().sum(-1).mean())
    assert moved["newest"] >= 10 * moved["oldest"], moved


def test_held_out_cross_entropy_leaves_the_label_frequencies_behind(trained):
    cfg, model, prepared = trained
    y = prepared.train.targets
    report = evaluate(model, cfg.act, prepared.test, LabelBaselines.fit(y.action.numpy(), y.state.numpy()))
    assert report.cross_entropy < report.frequency_ce - 0.2, report.lines()
    assert not any("ignores its input" in w for w in report.warnings)
