"""`dualhrq data list` and `dualhrq data show NAME|PATH`.

The data modules (pandas, numba) are imported by the handlers: every command's parser is built at each start.
"""

from __future__ import annotations

import argparse

import numpy as np

from dualhrq.arguments import nonnegative_int
from dualhrq.errors import ConfigurationError


def _when(ns: int) -> str:
    return str(np.datetime64(int(ns), "ns").astype("datetime64[m]")).replace("T", " ")


def _cmd_list(args: argparse.Namespace) -> int:
    from dualhrq.data.sources import list_datasets

    print(f"{'name':<12}{'instrument':<12}{'timeframe':<11}{'bars':>7}  {'first close':<18}{'last close':<18}origin")
    for d in list_datasets():
        print(f"{d.name:<12}{d.instrument:<12}{d.timeframe:<11}{d.bars:>7}  {d.start:%Y-%m-%d %H:%M}  "
              f"{d.end:%Y-%m-%d %H:%M}  {d.origin}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from dualhrq.data.resample import default_coarse_rule, resample
    from dualhrq.data.sources import info, load_dataset

    ds = load_dataset(args.name, timestamps=args.timestamps, where="data show")
    d = info(ds)
    rule = args.coarse_rule
    if rule is None:
        try:
            rule = default_coarse_rule(ds.timeframe)
        except ConfigurationError:  # no default above daily bars: the file itself is still worth showing
            rule = None
    coarse = None if rule is None else resample(ds.bars, rule)  # an unusable --coarse-rule is refused here
    print(f"{d.name}: {d.instrument}, {d.timeframe} bars from {d.origin}")
    print(f"  {d.bars} bars, closes {d.start:%Y-%m-%d %H:%M} -> {d.end:%Y-%m-%d %H:%M} UTC (times are bar closes)")
    if coarse is None:
        print(f"  coarse timeframe: none by default for {d.timeframe} bars; pass --coarse-rule to see one")
    else:
        print(f"  coarse timeframe {rule}: {len(coarse)} closed bars")
    b = ds.bars
    rows = [*range(min(args.rows, len(b)))]
    rows += [i for i in range(max(len(b) - args.rows, 0), len(b)) if i not in rows]
    if rows:
        print(f"\n{'row':>6}  {'close time (UTC)':<17}{'open':>12}{'high':>12}{'low':>12}{'close':>12}{'volume':>14}")
    for j, i in enumerate(rows):
        if j and i != rows[j - 1] + 1:
            print(f"{'...':>6}")
        print(f"{i + 1:>6}  {_when(b.t[i]):<17}{b.o[i]:>12.6g}{b.h[i]:>12.6g}{b.l[i]:>12.6g}{b.c[i]:>12.6g}"
              f"{b.v[i]:>14.6g}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="bundled market datasets and your own OHLCV files",
                              description="List the real datasets shipped inside installed packages, or inspect "
                                          "one (or your CSV/Parquet file) after validation.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="table of the bundled datasets",
                        description="Name, instrument, timeframe, bar count and span of each bundled dataset.")
    ls.set_defaults(func=_cmd_list)
    show = sub.add_parser("show", help="summary and first/last bars of a dataset or file",
                          description="Load a bundled dataset by name or a CSV/Parquet file by path (columns "
                                      "timestamp, open, high, low, close, volume; case-insensitive), validate "
                                      "it, and print its span, its coarse timeframe (see --coarse-rule) and its "
                                      "first and last bars. A bad file is reported by its first bad data row and "
                                      "column.")
    show.add_argument("name", help="a name from `dualhrq data list`, or a .csv/.csv.gz/.parquet path")
    show.add_argument("--timestamps", choices=("open", "close"), default="open",
                      help="what a file's timestamps mark (default: open; stored as the bar's close)")
    show.add_argument("--rows", type=nonnegative_int, default=5,
                      help="bars to print from each end (default 5; 0: the summary alone)")
    show.add_argument("--coarse-rule", metavar="RULE",
                      help="coarse timeframe to count, e.g. 4h, 1d, 1w (the config's data.coarse_rule; default "
                           "1d for intraday bars, 1w for daily ones, none for longer ones)")
    show.set_defaults(func=_cmd_show)
