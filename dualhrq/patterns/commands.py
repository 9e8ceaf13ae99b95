"""Command-line entry points of dualhrq.patterns: `index build`, `regimes`, and the `bench index` benchmark.

dualhrq.cli calls ``register(subparsers)`` and mounts the benchmark with ``add_index_bench_args`` and
``run_index_bench`` under ``dualhrq bench index``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from dualhrq.arguments import nonnegative_int, positive_int
from dualhrq.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    index = subparsers.add_parser(
        "index", help="the pattern library (build it from real data)",
        description="The pattern library: past windows of market data and what followed them, searched at "
                    "serve time (exactly up to 4,096 entries, with hnswlib beyond; failing open to regime-only "
                    "when slow). hnswlib's recall and latency: `dualhrq bench index`.")
    index_sub = index.add_subparsers(dest="index_command", metavar="INDEX", required=True)
    build = index_sub.add_parser(
        "build", help="build the pattern library, encoder and regimes from the training window",
        description="Embed every complete pattern window of the config's dataset in its training window "
                    "(data.train_fraction) with a fixed PCA encoder, label regimes, and save the hnswlib library "
                    "with its encoder and regime model (SHA-256 checked on load).")
    build.add_argument("--config", required=True, help="config YAML (data, model.num_regimes, patterns sections)")
    build.add_argument("--out", default=None, help="output directory (default: runs/patterns/<dataset>)")
    build.set_defaults(func=_cmd_index_build)

    regimes = subparsers.add_parser(
        "regimes", help="the market regimes found in the training window",
        description="Fit k-means regimes (model.num_regimes) on the training window's regime features and print, "
                    "per regime, its share of time, mean volatility, mean return and exits per day, with the "
                    "overall switch rate.")
    regimes.add_argument("--config", required=True, help="config YAML (data and model sections)")
    regimes.add_argument("--json", action="store_true", help="print the summary as JSON")
    regimes.set_defaults(func=_cmd_regimes)


def _cmd_index_build(args: argparse.Namespace) -> int:
    from dualhrq.patterns.artifacts import save_artifacts
    from dualhrq.patterns.build import build_library

    cfg = load_config(args.config)
    out = Path(args.out or Path("runs/patterns") / cfg.data.name)
    t0 = time.perf_counter()
    library, encoder, regimes = build_library(cfg.model, cfg.patterns, cfg.data, cfg.train.seed)
    build_s = time.perf_counter() - t0
    save_artifacts(out, library, encoder, regimes)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    explained = float(encoder.explained_variance_ratio.sum()) if encoder.explained_variance_ratio is not None else 0
    print(f"pattern library for {cfg.data.name}: {len(library):,} entries, {library.dim}-d embeddings "
          f"({explained:.0%} of feature variance), {regimes.n_regimes} regimes")
    print(f"built in {build_s:.2f} s (features, regimes, encoder, index); {size / 1e6:.2f} MB in {out}")
    return 0


def _cmd_regimes(args: argparse.Namespace) -> int:
    from dualhrq.patterns.build import fit_training_regimes, regime_table_inputs, training_windows
    from dualhrq.patterns.regimes import regime_summary

    cfg = load_config(args.config)
    windows = training_windows(cfg.data)
    model, rows = fit_training_regimes(windows, cfg.model.num_regimes, cfg.train.seed)
    summaries = {}
    for window, r in zip(windows, rows):
        returns, vol, t = regime_table_inputs(window, r)
        summaries[window.instrument] = (regime_summary(model.predict(window.regime_features[r]), returns, vol, t,
                                                       model.n_regimes), t)
    if args.json:
        print(json.dumps({k: dataclasses.asdict(s) for k, (s, _) in summaries.items()}, indent=2))
        return 0
    for instrument, (summary, t) in summaries.items():
        span = " .. ".join(datetime.fromtimestamp(int(x) / 1e9, tz=timezone.utc).strftime("%Y-%m-%d")
                           for x in t[[0, -1]])
        print(f"regimes of {instrument} (one model over {cfg.data.name}), training window {span}, {len(t):,} bars, "
              f"k-means R={model.n_regimes} seed={cfg.train.seed}; 0 = calmest")
        print(f"{'regime':>6} {'share':>7} {'mean vol':>10} {'mean return':>12} {'exits/day':>10}")
        for r in summary.regimes:
            print(f"{r.regime:>6} {r.share:>7.1%} {r.mean_vol:>10.5f} {r.mean_return:>+12.6f} {r.exits_per_day:>10.3f}")
        print(f"switches per day: {summary.switches_per_day:.3f}; share of bar-to-bar steps that switch: "
              f"{summary.switch_rate:.1%} (under 5%: persistent enough to condition on)")
    return 0


def add_index_bench_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dualhrq bench index` (recall@k against exact search and query latency per ef)."""
    from dualhrq.patterns.recall import BENCH_DATASETS, BENCH_WINDOWS

    parser.description = (f"Embed every window of {', '.join(BENCH_DATASETS)} at several window lengths "
                          "(real data, ~68k vectors by default), hold some out as queries, index the rest and "
                          "report build time, size, recall@k against exact brute force and p50/p99 query latency "
                          "at each ef.")
    parser.add_argument("--config", default=None,
                        help="config YAML whose patterns section sets space, m, ef_construction, embed_dim, ef "
                             "(default: the built-in defaults)")
    parser.add_argument("--ef", type=positive_int, nargs="+", default=None,
                        help="ef values to measure (default: 16 and the config's patterns.ef)")
    parser.add_argument("--k", type=positive_int, default=8, help="neighbours per query (default 8)")
    parser.add_argument("--queries", type=positive_int, default=1000, help="held-out query windows (default 1000)")
    parser.add_argument("--windows", type=positive_int, nargs="+", default=list(BENCH_WINDOWS),
                        help=f"pattern window lengths to embed (default {' '.join(map(str, BENCH_WINDOWS))})")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="which windows are held out as queries")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")
    parser.set_defaults(func=run_index_bench)


def run_index_bench(args: argparse.Namespace) -> int:
    from dualhrq.config import PatternsConfig
    from dualhrq.patterns.recall import bench_index, real_embeddings

    cfg = load_config(args.config).patterns if args.config else PatternsConfig()
    ef_values = args.ef or sorted({16, cfg.ef})
    x = real_embeddings(cfg.embed_dim, windows=args.windows)
    result = bench_index(x, cfg, k=args.k, ef_values=ef_values, n_queries=args.queries, seed=args.seed)
    print(f"hnswlib {cfg.space} M={cfg.m} ef_construction={cfg.ef_construction}: {result.entries:,} real-data "
          f"embeddings of {result.dim} dims, {result.queries} held-out queries, k={result.k}")
    print(f"build {result.build_s:.2f} s; index {result.index_bytes / 1e6:.1f} MB, "
          f"library on disk {result.library_bytes / 1e6:.1f} MB")
    print(f"{'ef':>6} {'recall@' + str(result.k):>10} {'p50 us':>9} {'p99 us':>9}")
    for p in result.points:
        print(f"{p.ef:>6} {p.recall:>10.4f} {p.p50_us:>9.1f} {p.p99_us:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return 0
