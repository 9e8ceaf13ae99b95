"""`dualhrq validate`: the command-line face of dualhrq.evaluate."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from dualhrq.arguments import positive_int
from dualhrq.config import Config, TrackingConfig, load_config
from dualhrq.errors import EXIT_CHECK_FAILED, EXIT_ERROR, ConfigurationError, HRMError

if TYPE_CHECKING:  # the validation stack (pandas, arch) loads only when `validate` runs
    from dualhrq.evaluate.fanout import Runner
    from dualhrq.evaluate.pooled import PooledResult
    from dualhrq.evaluate.report import ValidationResult
    from dualhrq.evaluate.validate import DataLoader, HRMFactories, Predictor, PredictorFactory, ValidationData


def _cmd_validate(args: argparse.Namespace) -> int:
    from dualhrq.evaluate.hrm_predictor import hrm_factories

    return run_validate_command(args, hrm_factories)


def register(subparsers: argparse._SubParsersAction) -> None:
    v = subparsers.add_parser(
        "validate", help="walk-forward or CPCV validation of the HRM against baselines, with leakage checks",
        description="Fit and test the HRM and simple baselines on identical purged walk-forward splits "
                    "(validate.scheme: cpcv: combinatorial purged cross-validation), check for leakage, and write a "
                    "report with SPA, Reality Check and Deflated Sharpe Ratio. Each split refits the HRM's input "
                    "pipeline on its training bars alone: under CPCV on the time spans between its test groups, "
                    "purge gaps and embargoes. --compare-fail-open adds the HRM with its pattern context masked "
                    "(regime-only).")
    add_validate_args(v)
    v.set_defaults(func=_cmd_validate)
    r = subparsers.add_parser(
        "runs", help="the run ledger: every train and validate run, its config hash, data, seed, scores, verdict",
        description="List the runs recorded in a run ledger (SQLite), oldest first.")
    r.add_argument("--ledger", default="runs/ledger.sqlite", help="the ledger file (default: runs/ledger.sqlite)")
    r.add_argument("--kind", choices=("train", "validate"), default=None, help="only runs of this kind")
    r.add_argument("--json", action="store_true", help="print the runs as JSON")
    r.set_defaults(func=_cmd_runs)


def _cmd_runs(args: argparse.Namespace) -> int:
    import json
    from datetime import datetime, timezone

    from dualhrq.evaluate.ledger import Ledger

    if not Path(args.ledger).is_file():
        raise ConfigurationError(f"--ledger: {args.ledger}: no run ledger there (train or validate writes one)")
    with Ledger(args.ledger, read_only=True, setting="--ledger") as ledger:
        runs = ledger.runs(args.kind)
    if args.json:
        print(json.dumps([{**r.__dict__} for r in runs], indent=2))
        return 0
    print(f"{'id':>4}  {'when (UTC)':<16}  {'kind':<8}  {'config':<16}  {'data':<16}  {'seed':>4}  headline")
    for r in runs:
        when = datetime.fromtimestamp(r.created, timezone.utc).strftime("%Y-%m-%d %H:%M")
        print(f"{r.run_id:>4}  {when:<16}  {r.kind:<8}  {r.config_hash:<16}  {r.data_fingerprint:<16}  {r.seed:>4}  "
              f"{_headline(r.kind, r.metrics, r.verdict)}")
    return 0


def _headline(kind: str, metrics: dict[str, Any], verdict: str | None) -> str:
    if kind == "train":
        ce = metrics.get("best_test.cross_entropy")
        return f"step {metrics.get('step')}" + (f", held-out CE {ce:.4f}" if isinstance(ce, float) else "")
    trials, pbo = metrics.get("n_trials"), metrics.get("pbo")
    head = f"trials {trials}" + (f", PBO {pbo:.3f}" if isinstance(pbo, float) else "")
    return f"{head}; {verdict or ''}"[:160]


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
    parser.add_argument("--seeds", type=positive_int, default=1, metavar="K",
                        help="validate the HRM with K training seeds (train.seed, +1, ...): the report gives their "
                             "mean and spread, the DSR and PBO count each (default 1)")
    parser.add_argument("--tracking", metavar="mlflow[:URI]", default=None,
                        help="also mirror the run, its metrics and reports to MLflow (the mlflow extra); URI: a "
                             "tracking server or a local file store path (default: the config's tracking section)")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run each predictor's splits (and each seed) as Ray tasks (the ray extra): on a local Ray "
                             "started for the run, or the cluster at ADDRESS (e.g. ray://head:10001 or auto); the run "
                             "directory must be shared storage. The report is the sequential run's, bit for bit")
    parser.add_argument("--workers", type=positive_int, default=None, metavar="N",
                        help="run the predictors' tasks in N local processes instead (no Ray needed; default: one after "
                             "another in this process)")


def _renamed(factory: PredictorFactory, name: str) -> PredictorFactory:
    def build(data: ValidationData, model_dir: Path) -> Predictor:
        predictor = factory(data, model_dir)
        predictor.name = name
        return predictor

    return build


def _further_seeds(cfg: Config, seeds: int) -> dict[str, int]:
    """The seeds after train.seed that --seeds K adds, by the name of the HRM trained with each."""
    return {f"hrm_seed{cfg.train.seed + k}": cfg.train.seed + k for k in range(1, seeds)}


def seed_factories(hrm: HRMFactories, cfg: Config, data: ValidationData, seeds: int) -> tuple[list, list[str]]:
    """The HRM retrained with each further seed, as predictors ``hrm_seed<N>`` (and their names)."""
    factories, further = [], _further_seeds(cfg, seeds)
    for name, seed in further.items():
        seeded = msgspec.structs.replace(cfg, train=msgspec.structs.replace(cfg.train, seed=seed))
        factories += [_renamed(f, name) for f in hrm(seeded, data, False)[:1]]
    return factories, list(further)


def predictor_names(cfg: Config, compare_fail_open: bool, seeds: int) -> list[str]:
    """The names of the predictors a validation runs, known before any data is read: what --candidate picks
    from. The baselines are those of dualhrq.evaluate.validate.baseline_factories (a test holds the two lists
    together)."""
    from dualhrq.evaluate import baselines as b

    hrm = ["hrm", "hrm_regime_only"] if compare_fail_open else ["hrm"]
    baselines = (b.BuyAndHold, b.MomentumSign, b.OneBarReversal, b.RidgeForecast, b.LogisticDirection, b.StateOnly,
                 b.MultinomialActions)
    return [*hrm, *_further_seeds(cfg, seeds), *(c.name for c in baselines)]


def _check_candidate(cfg: Config, args: argparse.Namespace) -> None:
    valid = predictor_names(cfg, args.compare_fail_open, args.seeds)
    if args.candidate not in valid:
        raise ConfigurationError(f"--candidate: no predictor {args.candidate!r} in this validation; one of: "
                                 f"{', '.join(valid)}")


def run_validate_command(args: argparse.Namespace, hrm: HRMFactories, *, load_data: DataLoader | None = None) -> int:
    """`dualhrq validate`: exit 0 on a clean run, 1 when leakage is found (a check failed), 2 on a configuration
    or data error (the CLI's exit-code table).

    ``hrm``: the HRM's predictor factories (the CLI's are dualhrq.evaluate.hrm_predictor's; tests pass
    stand-ins). ``load_data`` (tests: synthetic data) defaults to the config's dataset; a config with several
    validates each instrument in OUT/<instrument>/ and writes the pooled report in OUT
    (dualhrq.evaluate.pooled).
    """
    from dualhrq.evaluate.fanout import runner_for
    from dualhrq.evaluate.tracking import tracking_from_flag
    from dualhrq.evaluate.validate import load_validation_data, load_validation_panel

    try:
        cfg = load_config(args.config)
        _check_candidate(cfg, args)
        tracking = tracking_from_flag(cfg.tracking, getattr(args, "tracking", None))
        runner = runner_for(getattr(args, "ray", None), getattr(args, "workers", None))  # bad flags fail first
        out = Path(args.out or cfg.validate.out_dir)
        if load_data is None and len(cfg.data.datasets) > 1:
            panel = load_validation_panel(cfg)
            runs = {name: _validate_one(args, cfg, data, out / name, out, hrm, tracking, runner)
                    for name, data in panel.items()}
        else:
            runs = {"": _validate_one(args, cfg, (load_data or load_validation_data)(cfg), out, out, hrm, tracking,
                                      runner)}
        pooled = _pool(args, cfg, {k: r for k, (r, _) in runs.items()}, out) if len(runs) > 1 else None
    except HRMError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    leak = False
    for name, (result, ledger_line) in runs.items():
        if name:
            print(f"--- {name}")
        for p, m in result.overall.items():
            print(f"{p:>16}: Sharpe {m.sharpe:7.3f}  hit {m.hit_rate:6.3f}  IC {m.ic:7.3f}  max DD {m.max_drawdown:6.3f}")
        if result.pbo is not None:
            print(f"PBO {result.pbo.pbo:.3f} over {len(result.pbo.names)} trials, P(out-of-sample loss) "
                  f"{result.pbo.prob_oos_loss:.3f}")
        print(result.verdict())
        print(f"report: {(out / name if name else out) / 'report.md'}")
        print(ledger_line)
        if result.leak_found:
            leak = True
            for f in result.leakage.findings:
                print(f"LEAK {f.check}: {f.subject}: {f.detail}")
    if pooled is not None:
        print(f"--- pooled over {', '.join(pooled.instruments)} (equal weight per bar time)")
        for p, f in sorted(pooled.figures.items(), key=lambda kv: -kv[1].sharpe):
            print(f"{p:>16}: Sharpe {f.sharpe:7.3f}  net/year {f.net_per_year:+8.4f}  max DD {f.max_drawdown:6.3f}")
        print(pooled.verdict())
        print(f"report: {out / 'report.md'}")
    return EXIT_CHECK_FAILED if leak else 0


def _validate_one(args: argparse.Namespace, cfg: Config, data: ValidationData, out: Path, run_dir: Path,
                  hrm: HRMFactories, tracking: TrackingConfig, runner: Runner) -> tuple[ValidationResult, str]:
    """One dataset's validation into ``out``, recorded in the run ledger beside ``run_dir`` (the command's
    output directory: one instrument of a list shares the ledger of a run on that instrument alone):
    (result, the ledger line to print)."""
    from dualhrq.evaluate.ledger import Ledger, RunRecord, config_hash, default_ledger_path
    from dualhrq.evaluate.tracking import record_run
    from dualhrq.evaluate.validate import baseline_factories, run_validation

    extra, seeds = seed_factories(hrm, cfg, data, args.seeds)
    factories = hrm(cfg, data, args.compare_fail_open) + extra + baseline_factories(cfg.validate)
    comparisons = [("hrm", "hrm_regime_only")] if args.compare_fail_open else []
    with Ledger(default_ledger_path(cfg, run_dir)) as ledger:
        fingerprint = data.data_fingerprint()
        result = run_validation(
            cfg, data, factories, out, resume=not args.fresh, candidate=args.candidate, comparisons=comparisons,
            seeds=seeds, earlier=ledger.trials(fingerprint), progress=not args.no_progress, runner=runner,
        )
        record = RunRecord(kind="validate", config_hash=config_hash(cfg), data_fingerprint=fingerprint,
                           dataset=data.name, seed=cfg.train.seed, run_dir=str(out.resolve()),
                           metrics=result.summary(), verdict=result.verdict())
        record = record_run(tracking, ledger, record, cfg, result.trials(),
                            [out / "report.md", out / "report.json", out / "equity.png"])
    return result, f"ledger: {ledger.path} (run {record.run_id})"


def _pool(args: argparse.Namespace, cfg: Config, results: dict[str, ValidationResult], out: Path) -> PooledResult:
    from dualhrq.evaluate.pooled import pool, write_pooled_report

    periods = float(next(iter(results.values())).settings["periods_per_year"])  # each run's own estimate
    pooled = pool(results, cfg.validate, args.candidate, periods)
    write_pooled_report(pooled, results, out)
    return pooled
