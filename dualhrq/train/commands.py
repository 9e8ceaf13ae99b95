"""`dualhrq train` and `dualhrq validate` (the latter mounted from dualhrq.train.validate, with the HRM)."""

from __future__ import annotations

import argparse
import os

from dualhrq.config import load_config


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    from dualhrq.train.loop import train

    cfg = load_config(args.config)
    result = train(cfg, args.out, steps=args.steps, resume=args.resume, stop_at=args.stop_at,
                   progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    last = result.history[-1] if result.history else {}
    acc, seg = last.get("accuracy"), last.get("segments")
    print(f"trained to step {result.step}: loss {last.get('loss', float('nan')):.4f}, "
          f"accuracy {'-' if acc is None else f'{acc:.3f}'}, mean segments {'-' if seg is None else f'{seg:.2f}'}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"metrics log: {result.out_dir / 'metrics.jsonl'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from dualhrq.train.hrm_predictor import hrm_factories
    from dualhrq.train.validate import run_validate_command

    return run_validate_command(args, hrm=hrm_factories)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train the HRM on real bars (deep supervision, ACT), with checkpoints and --resume",
        description="Train the HRM with deep supervision over ACT segments and Q-learning halting. Writes "
                    "OUT/metrics.jsonl, OUT/checkpoints/step_N/ (weights, config, input artifacts, pattern "
                    "library, optimizer state) and OUT/latest. Data-parallel: torchrun --nproc_per_node N "
                    "-m dualhrq train ... (gloo on CPU, NCCL on CUDA).")
    p.add_argument("--config", required=True, help="training config YAML, e.g. config/train_eurusd.yaml")
    p.add_argument("--out", default=None, help="run directory (default: the config's train.out_dir)")
    p.add_argument("--steps", type=_positive, default=None,
                   help="total steps of the run, the schedule's length (default: train.steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, bit-exactly on CPU")
    p.add_argument("--stop-at", type=_positive, default=None, metavar="STEP",
                   help="stop after this step (a checkpoint is written); --resume continues later")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    from dualhrq.train.validate import add_validate_args

    v = subparsers.add_parser(
        "validate", help="walk-forward / CPCV validation of the HRM against baselines, with leakage checks",
        description="Fit and test the HRM and simple baselines on identical purged splits, check for leakage, "
                    "and write a report with SPA, Reality Check and Deflated Sharpe Ratio. "
                    "--compare-fail-open adds the HRM with its pattern context masked (regime-only).")
    add_validate_args(v)
    v.set_defaults(func=_cmd_validate)
