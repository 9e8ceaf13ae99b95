"""How good and how fast the pattern index is: recall@k against exact search, and single-query latency, per ef.

hnswlib is approximate; ``ef`` trades recall for time. The benchmark holds out some real-data windows as
queries, indexes the rest, and compares hnswlib's k nearest with brute force (`exact_knn`: float32 vectors,
float64 distances) at each ef.
Latency is one query at a time through ``PatternLibrary.query`` (time filter and metadata copy included): the
graph search a library of more than EXACT_MAX rows gets. Smaller libraries (every bundled one) are searched
exactly, at a fixed cost, so there is nothing to benchmark and the command refuses them.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from dualhrq.config import PatternsConfig
from dualhrq.errors import DataError
from dualhrq.patterns.encoder import PatternEncoder
from dualhrq.patterns.library import EXACT_MAX, PatternLibrary, exact_knn

BENCH_DATASETS = ("eurusd_1h", "goog_1d", "sp500_1d", "nasdaq_1d")
# One window length gives ~17k windows over the four bundled series; four lengths give ~68k, past the 50k the
# benchmark needs, with real data only.
BENCH_WINDOWS = (16, 24, 32, 48)
_NEVER = np.iinfo(np.int64).max  # as_of for queries that may see every entry


def real_embeddings(embed_dim: int, windows: Sequence[int] = BENCH_WINDOWS,
                    datasets: Sequence[str] = BENCH_DATASETS) -> np.ndarray:
    """Embeddings [n, embed_dim] of every complete window of every dataset, for each window length.

    Each window length has its own feature width, so each gets its own encoder (fitted on all datasets'
    windows of that length); the embeddings then share one space of ``embed_dim`` dims.
    """
    from dualhrq.data.sources import load_dataset  # pandas: not for the parser, which reads the defaults above
    from dualhrq.features import pattern_features

    bars = [load_dataset(name).bars for name in datasets]
    parts = []
    for w in windows:
        feats = [pattern_features(b, w) for b in bars]
        x = np.concatenate([f[np.isfinite(f).all(axis=1)] for f in feats])
        parts.append(PatternEncoder(embed_dim).fit(x).encode(x))
    return np.concatenate(parts)


@dataclass(frozen=True)
class EfPoint:
    ef: int
    recall: float  # mean share of the exact k nearest that hnswlib returned
    p50_us: float
    p99_us: float


@dataclass(frozen=True)
class IndexBench:
    entries: int
    dim: int
    k: int
    queries: int
    build_s: float  # PatternLibrary construction + add of every entry
    index_bytes: int  # hnswlib's saved graph
    library_bytes: int  # every saved file: graph, metadata, manifest
    points: list[EfPoint]


def bench_index(embeddings: np.ndarray, cfg: PatternsConfig, k: int = 8, ef_values: Sequence[int] = (16, 64),
                n_queries: int = 1000, seed: int = 0) -> IndexBench:
    """Index all but ``n_queries`` random rows of ``embeddings``, then measure recall@k and latency per ef."""
    x = np.ascontiguousarray(embeddings, np.float32)
    if len(x) <= n_queries + k:
        raise DataError(f"embeddings: {len(x)} rows are too few for {n_queries} queries and k={k}")
    order = np.random.default_rng(seed).permutation(len(x))
    queries, base = x[order[:n_queries]], x[order[n_queries:]]
    if len(base) <= EXACT_MAX:
        raise DataError(f"embeddings: {len(base)} indexed rows would be searched exactly, not through the graph; "
                        f"need more than {EXACT_MAX}")
    cfg = msgspec.structs.replace(cfg, max_elements=max(cfg.max_elements, len(base)))

    t0 = time.perf_counter()
    lib = PatternLibrary(x.shape[1], cfg)
    lib.add(base, instrument="bench", window_start=0, window_end=0, available_at=0, outcome=0.0, regime=0)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        saved = lib.save(Path(tmp))
        index_bytes = (saved / "index.bin").stat().st_size
        library_bytes = sum(p.stat().st_size for p in saved.iterdir())

    truth, _ = exact_knn(queries, base, k, cfg.space)  # row i of base has label i: added first, in order
    points = []
    for ef in ef_values:
        lib.ef = ef
        found = np.empty((n_queries, k), np.int64)
        lat_us = np.empty(n_queries)
        for i in range(n_queries):
            t = time.perf_counter_ns()
            hits = lib.query(queries[i:i + 1], _NEVER, k)
            lat_us[i] = (time.perf_counter_ns() - t) / 1e3
            found[i] = hits.ids[0]
        recall = np.mean([len(np.intersect1d(f, g)) / k for f, g in zip(found, truth)])
        points.append(EfPoint(ef=int(ef), recall=float(recall), p50_us=float(np.percentile(lat_us, 50)),
                              p99_us=float(np.percentile(lat_us, 99))))
    return IndexBench(entries=len(base), dim=x.shape[1], k=k, queries=n_queries, build_s=build_s,
                      index_bytes=index_bytes, library_bytes=library_bytes, points=points)
