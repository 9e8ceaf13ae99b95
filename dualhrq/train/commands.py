"""`dualhrq train`: the command-line face of dualhrq.train."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dualhrq.arguments import positive_int
from dualhrq.config import Config, load_config

if TYPE_CHECKING:
    from dualhrq.train.loop import RunResult


def _cmd_train(args: argparse.Namespace) -> int:
    import msgspec

    from dualhrq.evaluate.tracking import tracking_from_flag
    from dualhrq.train.evaluation import instrument_table
    from dualhrq.train.loop import train

    cfg = load_config(args.config)
    tracking = tracking_from_flag(cfg.tracking, args.tracking)  # a bad flag fails before the run, not after
    result = train(cfg, args.out, steps=args.steps, resume=args.resume, stop_at=args.stop_at,
                   progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    # A resumed run trained with its checkpoint's config, which the ledger records; where it records the run
    # is this command's tracking.
    ledger_path = _record(msgspec.structs.replace(result.config, tracking=tracking), result)
    last = result.history[-1] if result.history else {}
    acc, seg = last.get("train_accuracy"), last.get("segments")
    print(f"trained to step {result.step}: training loss {last.get('loss', float('nan')):.4f}, training accuracy "
          f"(last log window) {'-' if acc is None else f'{acc:.3f}'}, mean segments {'-' if seg is None else f'{seg:.2f}'}")
    print(f"checkpoint: {result.checkpoint}")
    if result.best is not None and result.best_val is not None and result.best_test is not None:
        print(f"best checkpoint (lowest validation CE {result.best_val.cross_entropy:.4f}): {result.best}")
        print("held-out tail, best checkpoint:")
        for line in result.best_test.lines():
            print(f"  {line}")
        for warning in result.best_test.warnings:
            print(f"  WARNING: {warning}")
        if result.best_test_by_instrument:
            print("held-out tail by instrument (one model for all; each against its own training label baselines):")
            for line in instrument_table(result.best_test_by_instrument):
                print(f"  {line}")
        rule = result.best_rule
        if rule is not None:
            edge = "never trades" if rule.min_edge is None else f"trades past {rule.min_edge:g} x the cost"
            print(f"decision rule (fitted on the {rule.fitted_on}): temperature {rule.temperature:.2f}, {edge}; "
                  f"there it traded {100 * rule.validation_trade_share:.1f}% of bars for "
                  f"{rule.validation_gain:+.4f} return std per bar over always holding")
            if rule.validation_trade_share == 0:
                print("  NOTE: no margin paid the cost on the validation slice, so the exported bundle serves HOLD "
                      "on every bar; the probabilities in its replies are still the model's own")
    print(f"metrics log: {result.out_dir / 'metrics.jsonl'}")
    print(f"ledger: {ledger_path}")
    return 0


def _record(cfg: Config, result: RunResult) -> Path:
    """Append the finished run of ``cfg`` to the run ledger (and MLflow when ``cfg.tracking`` asks for it)."""
    from dualhrq.data.sources import load_datasets
    from dualhrq.evaluate.ledger import Ledger, RunRecord, config_hash, datasets_fingerprint, default_ledger_path
    from dualhrq.evaluate.tracking import record_run

    last = result.history[-1] if result.history else {}
    metrics: dict[str, object] = {"step": result.step, **{k: v for k, v in last.items() if isinstance(v, (int, float))}}
    if result.best_val is not None:
        metrics.update(result.best_val.to_dict("best_val."))
    if result.best_test is not None:
        metrics.update(result.best_test.to_dict("best_test."))
    fingerprint = datasets_fingerprint([d.bars for d in load_datasets(cfg.data)])
    record = RunRecord(kind="train", config_hash=config_hash(cfg), data_fingerprint=fingerprint,
                       dataset="+".join(cfg.data.datasets), seed=cfg.train.seed, run_dir=str(Path(result.out_dir).resolve()),
                       metrics=metrics)
    with Ledger(default_ledger_path(cfg, result.out_dir)) as ledger:
        record_run(cfg.tracking, ledger, record, cfg, artifacts=[Path(result.out_dir) / "metrics.jsonl"])
        return ledger.path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train the HRM on real bars (deep supervision, ACT), with checkpoints and --resume",
        description="Train the HRM with deep supervision over ACT segments and Q-learning halting. Writes "
                    "OUT/metrics.jsonl, OUT/checkpoints/step_N/ (weights, config, input artifacts, pattern "
                    "library, optimizer state) and OUT/latest. Data-parallel: torchrun --nproc_per_node N "
                    "-m dualhrq train ... (gloo on CPU, NCCL on CUDA).")
    p.add_argument("--config", required=True, help="training config: a YAML path or a shipped name (`dualhrq config list`), e.g. train_eurusd")
    p.add_argument("--out", default=None, help="run directory (default: the config's train.out_dir)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="total steps of the run, the schedule's length (default: train.steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, bit-exactly on CPU")
    p.add_argument("--stop-at", type=positive_int, default=None, metavar="STEP",
                   help="stop after this step (a checkpoint is written); --resume continues later")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tracking", metavar="mlflow[:URI]", default=None,
                   help="also mirror the run and its metrics to MLflow (the mlflow extra); every run is in the run "
                        "ledger either way (tracking.ledger, default RUNS/ledger.sqlite)")
    p.set_defaults(func=_cmd_train)
