"""Percentile summaries, text tables and plots of latency runs."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dualhrq.bench.loadgen import LoadResult
from dualhrq.runtime.metrics import STAGES

PERCENTILES = (50, 90, 95, 99, 99.9)


def percentiles_ms(latencies_ms: np.ndarray) -> dict[str, float]:
    if len(latencies_ms) == 0:
        return {f"p{p:g}": float("nan") for p in PERCENTILES} | {"max": float("nan")}
    out = {f"p{p:g}": float(np.percentile(latencies_ms, p)) for p in PERCENTILES}
    out["max"] = float(latencies_ms.max())
    return out


def summarize(run: LoadResult) -> dict[str, Any]:
    """All figures of one phase. Percentiles cover every request (errors and timeouts included)."""
    lat = np.array([s.latency_ms for s in run.samples])
    signals = [s for s in run.samples if s.kind == "signal"]
    stages = {st: np.array([s.timing_us.get(st, np.nan) for s in signals], dtype=float) for st in STAGES}
    engine_ms = stages["engine"] / 1e3
    # What the runtime adds to the engine's own time, per request: everything but the engine, on the wire too.
    overhead_ms = np.array([s.latency_ms for s in signals]) - engine_ms if signals else np.array([])
    reasons = Counter(s.fail_reason for s in signals if s.fail_open)
    return {
        "mode": run.mode,
        "requests": len(run.samples),
        "latency_ms": percentiles_ms(lat),
        "throughput_rps": run.throughput,
        "replies_by_kind": dict(Counter(s.kind for s in run.samples)),
        "fail_open_rate": (sum(s.fail_open for s in signals) / len(signals)) if signals else 0.0,
        "fail_open_reasons": {str(k): v for k, v in reasons.items()},
        "server_stage_mean_us": {st: _nan_stat(np.nanmean, v) for st, v in stages.items()},
        "server_stage_p95_us": {st: _nan_stat(lambda x: np.nanpercentile(x, 95), v) for st, v in stages.items()},
        "engine_ms": percentiles_ms(engine_ms[np.isfinite(engine_ms)]) if signals else percentiles_ms(np.array([])),
        "overhead_ms": percentiles_ms(overhead_ms[np.isfinite(overhead_ms)]),
    }


def _nan_stat(stat: Any, values: np.ndarray) -> float:
    return float(stat(values)) if np.isfinite(values).any() else float("nan")


def format_summary(name: str, s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    lines = [f"[{name}] {s['requests']} requests, {s['mode']} loop, {s['throughput_rps']:.1f} req/s",
             "  latency ms: " + "  ".join(f"{k} {v:.3f}" for k, v in lat.items()),
             "  replies: " + ", ".join(f"{k} {v}" for k, v in sorted(s["replies_by_kind"].items())),
             f"  fail-open rate: {s['fail_open_rate']:.1%}"
             + (f" ({', '.join(f'{k} {v}' for k, v in s['fail_open_reasons'].items())})"
                if s["fail_open_reasons"] else ""),
             "  server stages (mean us): " + "  ".join(f"{k} {v:.0f}" for k, v in s["server_stage_mean_us"].items()),
             "  server stages (p95 us):  " + "  ".join(f"{k} {v:.0f}" for k, v in s["server_stage_p95_us"].items()),
             f"  engine p95 {s['engine_ms']['p95']:.3f} ms (server side, all ACT segments); end-to-end p95 minus "
             f"engine p95: {lat['p95'] - s['engine_ms']['p95']:.3f} ms; runtime overhead per request p95 "
             f"{s['overhead_ms']['p95']:.3f} ms"]
    return "\n".join(lines)


def format_floor(server: dict[str, Any], floor: dict[str, Any], warm: dict[str, Any]) -> str:
    """The server's end-to-end minus engine p95 beside the transport floor's (an echo that only decodes and
    encodes, after a pass over the graph's bytes), and the bare round trip's p95 (``warm``: no pass)."""
    def above_engine(s: dict[str, Any]) -> float:
        return s["latency_ms"]["p95"] - s["engine_ms"]["p95"]

    host, wire = above_engine(server), above_engine(floor)
    line = (f"transport floor (an echo that only decodes and encodes, after a pass over the graph's bytes): "
            f"end-to-end p95 minus pass p95 {wire:.3f} ms; the server's end-to-end p95 minus engine p95 "
            f"{host:.3f} ms, {host - wire:.3f} ms above the floor")
    return line + f"; the bare round trip (no pass, warm caches): p95 {warm['latency_ms']['p95']:.3f} ms"


def judge_load(batch1: dict[str, Any], load: dict[str, Any]) -> dict[str, float]:
    """The open-loop phase's end-to-end p99 against twice the engine's batch-1 p99 of the 1-in-flight phase."""
    p99, bound = load["latency_ms"]["p99"], 2 * batch1["engine_ms"]["p99"]
    return {"p99_ms": p99, "bound_ms": bound, "ratio": p99 / bound}


def format_load(batch1: dict[str, Any], load: dict[str, Any], fraction: float) -> str:
    """`judge_load` in words, with the rate offered (and the one served)."""
    j = judge_load(batch1, load)
    return (f"under load (open loop offered {load['offered_rps']:.1f} req/s, {fraction:g} / the batch-1 engine p50 "
            f"{batch1['engine_ms']['p50']:.3f} ms; served {load['throughput_rps']:.1f}): end-to-end p99 "
            f"{j['p99_ms']:.3f} ms against twice the engine's batch-1 p99 {j['bound_ms']:.3f} ms, ratio "
            f"{j['ratio']:.2f} ({'within' if j['ratio'] <= 1 else 'above'})")


def output_file(text: str) -> Path:
    """argparse type of a file a bench writes (--json, --plot): refused before the run when it names a directory
    or its directory can neither be found nor made; a missing directory is made when the file is written
    (`made_parent`), and said so."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path")
    existing = next(d for d in path.absolute().parents if d.exists())
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {existing} is a file, so no directory can be made under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: directory {existing} is not writable")
    return path


def plot_file(text: str) -> Path:
    """argparse type of --plot: an `output_file` whose extension names a format matplotlib writes; without one it
    is PNG, and .png is appended (as matplotlib itself would, so the path reported is the one written)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = output_file(text)
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise argparse.ArgumentTypeError(f"{text}: matplotlib writes no {path.suffix} files; end the name in one of "
                                         f"{', '.join('.' + f for f in sorted(formats))}")
    return path


def made_parent(path: Path) -> str:
    """Make the missing directories above ``path``; returns what was made, in words for the line naming the file
    ("" when nothing was)."""
    if path.parent.is_dir():
        return ""
    path.parent.mkdir(parents=True)
    return f" (made the directory {path.parent})"


def plot_latencies(series: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """Latency CDF (log x) and histogram, one line per named series, saved headless in the format ``path``'s
    extension names (see `plot_file`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, hist) = plt.subplots(1, 2, figsize=(11, 4))
    for name, ms in series.items():
        ms = np.sort(np.asarray(ms, dtype=float))
        if len(ms) == 0:
            continue
        cdf.plot(ms, np.arange(1, len(ms) + 1) / len(ms), label=name)
        hist.hist(ms, bins=60, alpha=0.5, label=name)
    cdf.set_xscale("log")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of requests")
    cdf.axhline(0.95, color="grey", lw=0.5, ls="--")
    cdf.axhline(0.99, color="grey", lw=0.5, ls="--")
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("requests")
    for ax in (cdf, hist):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format=path.suffix[1:].lower())
    plt.close(fig)
    return path
