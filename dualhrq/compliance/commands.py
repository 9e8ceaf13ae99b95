"""`dualhrq replay`: stream historical bars through the compliance gate and prove zero violations.

`dualhrq.cli` calls ``register(subparsers)``. Exit status: 0 with zero violations, 1 with any (so CI can
gate on it), 2 on bad input (raised as HRMError and reported by the CLI).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dualhrq.arguments import nonnegative_int, positive_float, positive_int, zmq_address
from dualhrq.compliance.policies import POLICIES
from dualhrq.errors import ConfigurationError, DataError

if TYPE_CHECKING:
    from dualhrq.compliance.replay import ReplayReport, SignalFn
    from dualhrq.data.bars import Bars


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="replay history through the compliance gate (SSR, LULD, risk) and report violations",
        description="Stream historical bars (and optional quote events) through the signal source and the "
        "compliance gate; an independent checker re-checks every emitted action. Reports SSR and LULD state "
        "transitions, blocked actions by reason, and violations, which must be zero (exit status 1 otherwise).",
    )
    p.add_argument("--data", required=True, help="a bundled dataset name (see `dualhrq data list`) or an OHLCV "
                   "CSV/Parquet file (timestamp, open, high, low, close, volume; stamped at the bar's open)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="model bundle directory (from `dualhrq export`) that produces the signals")
    source.add_argument("--connect", type=zmq_address, metavar="ADDR",
                        help="a running server (e.g. tcp://127.0.0.1:5555, any number of workers) decides: its model "
                             "and its gate, re-checked here; only the bars' closes are fed (no quotes)")
    source.add_argument("--policy", choices=POLICIES,
                        help="a built-in signal source instead of a model: momentum (sign of the 5-bar move) "
                        "or random (seeded)")
    p.add_argument("--events", help="quote events, CSV (header ts,bid,ask,last) or JSON list, in time order; ts in "
                   "int ns UTC or ISO-8601 with offset; events on a day without a prior close or after the last bar "
                   "are skipped (a warning says how many; all skipped is an error)")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--markdown", metavar="FILE", help="write the report as Markdown")
    p.add_argument("--config", help="config YAML whose compliance section sets the risk limits (default: built-in)")
    p.add_argument("--instrument", help="instrument name in the report (default: the dataset's)")
    p.add_argument("--tier", type=int, choices=(1, 2), default=1, help="LULD tier of the instrument (default 1)")
    p.add_argument("--prior-close", type=positive_float, help="close of the day before the first bar; without it the "
                   "first day only provides the prior close")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of --policy random (default 0)")
    p.add_argument("--pnl", action="store_true",
                   help="with --bundle: on the held-out window (the tail the bundle's training kept out, when --data "
                        "is its dataset), fill the actions after the gate with validation's execution model and "
                        "report the P&L and the action agreement with the bundle's weights in PyTorch (exit 1 "
                        "when an fp32 bundle agrees on fewer than 99.5%% of bars)")
    p.add_argument("--pnl-bars", type=positive_int, default=None, metavar="N",
                   help="--pnl over the window's first N bars only (a quick check)")
    p.add_argument("--pnl-json", metavar="FILE", help="write the --pnl report as JSON")
    p.add_argument("--pnl-markdown", metavar="FILE", help="write the --pnl report as Markdown")
    p.set_defaults(func=run_replay)


_OUTPUTS = ("json", "markdown", "pnl_json", "pnl_markdown")  # the file flags, as argparse names them


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output file that cannot be written before the replay runs, not after it."""
    for name in _OUTPUTS:
        path = getattr(args, name)
        if path is None:
            continue
        flag, parent = "--" + name.replace("_", "-"), Path(path).parent
        if Path(path).is_dir():
            raise ConfigurationError(f"{flag}: {path} is a directory; give a file path")
        if not parent.is_dir():
            raise ConfigurationError(f"{flag}: {path}: no directory {parent} to write the report into")
        if not os.access(parent, os.W_OK):
            raise ConfigurationError(f"{flag}: {path}: directory {parent} is not writable")


def run_replay(args: argparse.Namespace) -> int:
    import msgspec

    from dualhrq.compliance.gate import ComplianceGate
    from dualhrq.compliance.policies import policy
    from dualhrq.compliance.replay import load_quote_events, replay
    from dualhrq.config import ComplianceConfig, load_config
    from dualhrq.data.sources import load_dataset

    _check_outputs(args)
    dataset = load_dataset(args.data)
    bars = dataset.bars
    instrument = args.instrument or dataset.instrument
    config = load_config(args.config).compliance if args.config else ComplianceConfig()
    config = msgspec.structs.replace(config, state_path=None)  # history must never touch the live state store
    events = load_quote_events(args.events) if args.events else None
    gate = ComplianceGate(config)
    pnl = None
    if args.pnl and not args.bundle:
        raise ConfigurationError("--pnl: fills a bundle's actions; give --bundle")
    if args.pnl:
        from dualhrq.compliance.pnl import held_out_window, pnl_replay, reference_signals
        from dualhrq.export.bundle import load_bundle

        window = held_out_window(dataset, load_bundle(args.bundle, verify=False))
        if args.pnl_bars is not None:
            window = (window[0], min(window[1], window[0] + args.pnl_bars - 1), window[2])
        report, pnl = pnl_replay(args.bundle, dataset, _bundle_signals(args.bundle, bars, instrument),
                                 reference_signals(args.bundle, dataset, instrument), config, events=events, instrument=instrument,
                                 tier=args.tier, prior_close=args.prior_close, window=window)
    elif args.connect:
        from dualhrq.runtime.client import Client
        from dualhrq.runtime.served_replay import served_decisions

        with Client(args.connect) as client:
            report = replay(bars, None, events, gate, instrument=instrument, tier=args.tier,
                            prior_close=args.prior_close, decide=served_decisions(client, bars, instrument))
    else:
        signal_fn = (_bundle_signals(args.bundle, bars, instrument) if args.bundle
                     else policy(args.policy, bars, args.seed))
        report = replay(bars, signal_fn, events, gate, instrument=instrument, tier=args.tier,
                        prior_close=args.prior_close)
    skipped = _skipped_events(args.events, report, bars) if events else ""
    if args.json:
        Path(args.json).write_text(report.to_json())
    if args.markdown:
        Path(args.markdown).write_text(report.to_markdown())
    blocked = ", ".join(f"{reason} {n}" for reason, n in sorted(report.blocked.items())) or "none"
    print(f"{report.instrument}: {report.decisions} decisions over {report.bars} bars, rules {report.rules_version}")
    # The gate knows one market's rules: on an FX pair or a future they are applied as if to a US stock.
    if config.enabled or args.connect:  # --connect: the server's gate decided
        print(f"note: {report.instrument} was gated as a US-listed stock (SEC Rule 201 SSR, LULD bands and pauses "
              "in NYSE regular hours); the gate has no rules of other markets")
    print(f"held back {report.held}, clipped {report.clipped} (by reason: {blocked}); "
          f"{len(report.transitions)} state transitions")
    if skipped:
        print(skipped)
    print(f"violations: {len(report.violations)}")
    if pnl is not None:
        if args.pnl_json:
            Path(args.pnl_json).write_text(pnl.to_json())
        if args.pnl_markdown:
            Path(args.pnl_markdown).write_text(pnl.to_markdown())
        print(pnl.to_markdown())
        if not pnl.parity_ok:
            return 1
    return 1 if report.violations else 0


def _skipped_events(path: str, report: ReplayReport, bars: Bars) -> str:
    """The warning line for quote events the replay skipped ("" for none); all of them skipped is an error, as
    the replay then ran on synthetic quotes alone, which is not what --events asked for."""
    if not report.skipped_events:
        return ""
    where = ("an event counts only up to the last bar's close, on a day with a prior close, which the first day "
             "replayed has only with --prior-close")
    if report.skipped_events == report.events:
        span = " to ".join(str(np.datetime64(int(t), "ns").astype("datetime64[s]")) for t in (bars.t[0], bars.t[-1]))
        raise DataError(f"--events {path}: all {report.events} quote events were skipped, none reached the gate: "
                        f"{where}; --data's bars close from {span} UTC")
    return f"warning: --events {path}: {report.skipped_events} of {report.events} quote events skipped ({where})"


def _bundle_signals(bundle: str, bars: Bars, instrument: str) -> SignalFn:
    from dualhrq.runtime.signals import signal_fn_from_bundle  # the serving stack loads only for --bundle

    try:
        return signal_fn_from_bundle(bundle, bars, instrument)
    except ConfigurationError as e:
        # e.g. an hourly bundle (coarse rule 1d) given daily bars: the bare message names a config key the
        # user of replay never set, so say which two inputs disagree.
        raise ConfigurationError(f"--bundle {bundle} cannot produce signals for these --data bars "
                                 f"(a bundle serves the bar timeframe it was trained on): {e}") from None
