"""`dualhrq train` and `dualhrq validate`: the command-line face of dualhrq.train."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dualhrq.config import load_config
from dualhrq.errors import EXIT_CHECK_FAILED, EXIT_ERROR, HRMError

if TYPE_CHECKING:  # the validation stack (pandas, arch) loads only when `validate` runs
    from dualhrq.train.validate import DataLoader, HRMFactories


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
        rule = result.best_rule
        if rule is not None:
            edge = "never trades" if rule.min_edge == float("inf") else f"trades past {rule.min_edge:g} x the cost"
            print(f"decision rule (fitted on the {rule.fitted_on}): temperature {rule.temperature:.2f}, {edge}; "
                  f"there it traded {100 * rule.validation_trade_share:.1f}% of bars for "
                  f"{rule.validation_gain:+.4f} return std per bar over always holding")
            if rule.validation_trade_share == 0:
                print("  NOTE: no margin paid the cost on the validation slice, so the exported bundle serves HOLD "
                      "on every bar; the probabilities in its replies are still the model's own")
    print(f"metrics log: {result.out_dir / 'metrics.jsonl'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from dualhrq.train.hrm_predictor import hrm_factories

    return run_validate_command(args, hrm=hrm_factories)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train the HRM on real bars (deep supervision, ACT), with checkpoints and --resume",
        description="Train the HRM with deep supervision over ACT segments and Q-learning halting. Writes "
                    "OUT/metrics.jsonl, OUT/checkpoints/step_N/ (weights, config, input artifacts, pattern "
                    "library, optimizer state) and OUT/latest. Data-parallel: torchrun --nproc_per_node N "
                    "-m dualhrq train ... (gloo on CPU, NCCL on CUDA).")
    p.add_argument("--config", required=True, help="training config: a YAML path or a shipped name (`dualhrq config list`), e.g. train_eurusd")
    p.add_argument("--out", default=None, help="run directory (default: the config's train.out_dir)")
    p.add_argument("--steps", type=_positive, default=None,
                   help="total steps of the run, the schedule's length (default: train.steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint, bit-exactly on CPU")
    p.add_argument("--stop-at", type=_positive, default=None, metavar="STEP",
                   help="stop after this step (a checkpoint is written); --resume continues later")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)


    v = subparsers.add_parser(
        "validate", help="walk-forward / CPCV validation of the HRM against baselines, with leakage checks",
        description="Fit and test the HRM and simple baselines on identical purged splits, check for leakage, "
                    "and write a report with SPA, Reality Check and Deflated Sharpe Ratio. "
                    "--compare-fail-open adds the HRM with its pattern context masked (regime-only).")
    add_validate_args(v)
    v.set_defaults(func=_cmd_validate)


def add_validate_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dualhrq validate`."""
    parser.add_argument("--config", required=True, help="YAML config; its validate section sets the splits")
    parser.add_argument("--out", default=None, help="output directory (default: the config's validate.out_dir)")
    parser.add_argument(
        "--compare-fail-open",
        action="store_true",
        help="also validate the HRM with its pattern context masked (regime-only) and compare on the same splits",
    )
    parser.add_argument(
        "--candidate",
        default="hrm",
        help="the predictor tested against all the others by SPA and the Reality Check (default: hrm)",
    )
    parser.add_argument("--fresh", action="store_true", help="ignore splits an earlier run saved; start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_validate_command(
    args: argparse.Namespace, *, load_data: DataLoader | None = None, hrm: HRMFactories | None = None
) -> int:
    """`dualhrq validate`: exit 0 on a clean run, 1 when leakage is found (a check failed), 2 on a configuration
    or data error (the CLI's exit-code table).

    The CLI binds ``hrm`` once the HRM predictor exists; without it the baselines run alone and the report
    says so. ``load_data`` defaults to the config's dataset.
    """
    from dualhrq.train.validate import baseline_factories, load_validation_data, run_validation

    load_data = load_data or load_validation_data
    try:
        cfg = load_config(args.config)
        data = load_data(cfg)
        factories = baseline_factories(cfg.validate)
        comparisons: list[tuple[str, str]] = []
        if hrm is None:
            print("no HRM predictor is wired in: validating the baselines only")
            if args.compare_fail_open:
                print("--compare-fail-open compares two HRM variants: skipped")
        else:
            factories = hrm(cfg, data, args.compare_fail_open) + factories
            if args.compare_fail_open:
                comparisons.append(("hrm", "hrm_regime_only"))
        out = Path(args.out or cfg.validate.out_dir)
        result = run_validation(
            cfg, data, factories, out, resume=not args.fresh, candidate=args.candidate, comparisons=comparisons,
            progress=not args.no_progress,
        )
    except HRMError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    for p, m in result.overall.items():
        print(f"{p:>16}: Sharpe {m.sharpe:7.3f}  hit {m.hit_rate:6.3f}  IC {m.ic:7.3f}  max DD {m.max_drawdown:6.3f}")
    print(result.verdict())
    print(f"report: {out / 'report.md'}")
    if result.leak_found:
        for f in result.leakage.findings:
            print(f"LEAK {f.check}: {f.subject}: {f.detail}")
        return EXIT_CHECK_FAILED
    return 0
