"""The engine floor again, from the other side: FLOPs from the model's config, the GEMM rate from each shape alone.

The bench's floor (dualhrq.bench.floor) reads its matmuls from the exported graph and times them as one graph.
This check shares neither step. Its matmuls are derived from the ModelConfig as HRM.forward runs them at
inference, so a tracer that duplicated, dropped or reshaped a weight matmul shows up as a count that disagrees
with the graph's. Its time is each distinct (M, K, N) as a graph of its own: as many MatMuls as the segment runs
of that shape, each on a random weight of its own, timed alone with the engines' threads and session options;
the shapes' times are summed. When the two floors agree within AGREE_WITHIN, the bench's floor is ONNX Runtime's
GEMM rate at the segment's shapes and not an artefact of how the floor graph was built.

NOTE: a weight of its own per run, not one weight repeated: at a few dozen rows a weight matmul reads each weight
once for little arithmetic, so where its weight comes from (cache or memory) sets its speed. The segment's
weights (over 100 MB at full size) stream from memory at every use; one repeated weight would sit in cache and
read faster (measured: 0.80 of the floor on a 32 MiB-L3 EPYC with one weight per shape).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper

from dualhrq.bench.floor import WeightMatmul
from dualhrq.config import ModelConfig, ModuleConfig
from dualhrq.contract import ort_session_options
from dualhrq.export.options import MIN_OPSET
from dualhrq.model.heads import READOUT_WIDTH
from dualhrq.model.vocab import ACTIONS

# The largest |independent / bench - 1| at which the two floors agree: beyond it, one of them is not timing the
# segment's matmuls as ONNX Runtime runs them (a bias of the floor graph's construction, or a miscount).
AGREE_WITHIN = 0.10

Shape = tuple[int, int, int]  # (M, K, N)


@dataclass(frozen=True)
class ConfigMatmul:
    """One weight matmul of the segment as the config implies it: `count` runs of [M, K] x [K, N]."""

    layer: str
    m: int
    k: int
    n: int
    count: int

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.count


def _module_matmuls(name: str, module: ModuleConfig, tokens: int, runs: int) -> list[ConfigMatmul]:
    """A reasoning module's four weight matmuls per block (attention qkv and out, SwiGLU gate_up and down),
    each run once per block per module update."""
    d, f, count = module.hidden_dim, module.ffn_dim, runs * module.num_layers
    return [ConfigMatmul(f"{name}.attn.qkv", tokens, d, 3 * d, count),
            ConfigMatmul(f"{name}.attn.out", tokens, d, d, count),
            ConfigMatmul(f"{name}.mlp.gate_up", tokens, d, 2 * f, count),
            ConfigMatmul(f"{name}.mlp.down", tokens, f, d, count)]


def config_matmuls(cfg: ModelConfig, batch: int) -> list[ConfigMatmul]:
    """Every weight matmul one inference segment runs at `batch` rows, from the config alone.

    Per segment the L module runs N x T times and the H module N times; the cross-level projections run once
    per cycle (z_H is fixed within a cycle, so its L injection is computed once per cycle); the input network,
    the conditioning and the heads run once. M is the rows a matmul sees: batch x tokens for the levels' token
    sequences, batch x K for the retrieved patterns, batch for everything pooled."""
    b, h, l = batch, cfg.h_module, cfg.l_module
    n, t = cfg.n_cycles, cfg.t_steps
    ctx = cfg.instrument_dim + cfg.timeframe_dim
    h_read, l_read = READOUT_WIDTH[cfg.readout] * h.hidden_dim, READOUT_WIDTH[cfg.readout] * l.hidden_dim
    patterns = b * cfg.pattern_k
    return [
        ConfigMatmul("input.h_proj", b * cfg.coarse_len, cfg.coarse_features, h.hidden_dim, 1),
        ConfigMatmul("input.l_proj", b * cfg.fine_len, cfg.fine_features, l.hidden_dim, 1),
        ConfigMatmul("input.h_ctx", b, ctx, h.hidden_dim, 1),
        ConfigMatmul("input.l_ctx", b, ctx, l.hidden_dim, 1),
        ConfigMatmul("conditioning.regime.hidden", b, cfg.regime_features, cfg.regime_hidden, 1),
        ConfigMatmul("conditioning.regime.out", b, cfg.regime_hidden, cfg.num_regimes, 1),
        ConfigMatmul("conditioning.patterns.key", patterns, cfg.pattern_dim, cfg.pattern_dim, 1),
        ConfigMatmul("conditioning.patterns.value", patterns, cfg.pattern_dim, cfg.pattern_dim, 1),
        ConfigMatmul("conditioning.patterns.query", patterns, cfg.pattern_dim, 1, 1),  # a weight vector
        ConfigMatmul("conditioning.film.hidden", b, cfg.num_regimes + cfg.pattern_dim, cfg.fusion_hidden, 1),
        ConfigMatmul("conditioning.film.out", b, cfg.fusion_hidden, 2 * l.hidden_dim, 1),
        ConfigMatmul("h_to_l", b, h.hidden_dim, l.hidden_dim, n),
        ConfigMatmul("l_to_h", b, l.hidden_dim, h.hidden_dim, n),
        *_module_matmuls("l_module", l, b * cfg.fine_len, n * t),
        *_module_matmuls("h_module", h, b * cfg.coarse_len, n),
        ConfigMatmul("heads.trunk", b, h_read + l_read, cfg.head_hidden, 1),
        ConfigMatmul("heads.policy", b, cfg.head_hidden, len(ACTIONS), 1),
        ConfigMatmul("heads.quantity", b, cfg.head_hidden, 1, 1),
        ConfigMatmul("heads.value", b, cfg.head_hidden, 1, 1),
        ConfigMatmul("heads.q", b, h_read, 2, 1),
        ConfigMatmul("heads.forecast_coarse", b, h_read, 1, 1),
        ConfigMatmul("heads.forecast_fine", b, l_read, 1, 1),
    ]


def shape_counts(matmuls: list[ConfigMatmul]) -> Counter[Shape]:
    """How often the segment runs each distinct (M, K, N)."""
    counts: Counter[Shape] = Counter()
    for w in matmuls:
        counts[(w.m, w.k, w.n)] += w.count
    return counts


def count_differences(expected: list[ConfigMatmul], traced: list[WeightMatmul]) -> list[str]:
    """Where the config's matmuls and the graph's differ, one line per (M, K, N); empty when they agree."""
    want = shape_counts(expected)
    got = Counter((w.m, w.k, w.n) for w in traced)
    layers: dict[Shape, list[str]] = {}
    for w in expected:
        layers.setdefault((w.m, w.k, w.n), []).append(w.layer)
    return [f"{m}x{k}x{n}: config {want[(m, k, n)]}, graph {got[(m, k, n)]}"
            f" ({', '.join(layers.get((m, k, n), ['no layer of the config']))})"
            for m, k, n in sorted(want.keys() | got.keys()) if want[(m, k, n)] != got[(m, k, n)]]


def _matmuls_graph(shape: Shape, count: int, rng: np.random.Generator) -> bytes:
    """`count` independent [M, K] x [K, N] MatMuls of one input, each on its own random weight."""
    m, k, n = shape
    weights = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [k, n], rng.standard_normal(k * n, np.float32))
               for i in range(count)]
    nodes = [helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(count)]
    graph = helper.make_graph(nodes, "one_shape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [m, n])
                               for i in range(count)], weights)
    # The lowest IR version that carries the opset: onnx's own default (its newest) can be beyond what an older
    # ONNX Runtime reads (onnx 1.23's IR 14 against ONNX Runtime 1.30's 13 on the first GPU machine).
    opset = [helper.make_opsetid("", MIN_OPSET)]
    return helper.make_model(graph, opset_imports=opset,
                             ir_version=helper.find_min_ir_version_for(opset)).SerializeToString()


class ShapeTimes:
    """Each distinct shape as its own session (see _matmuls_graph), callable like an engine so the bench times
    it in the same interleaved rounds (under the same load) as the floor it checks. A call runs every shape's
    session once and records its time: all of the segment's matmuls of that shape.

    One bias remains, small at full size: every shape pays a session run's overhead (tens of microseconds) that
    the floor graph pays once, which dominates a model as small as the tests' tiny one."""

    def __init__(self, counts: Counter[Shape], threads: int) -> None:
        import onnxruntime as ort

        rng = np.random.default_rng(0)  # any values time alike; a fixed seed builds the same graphs every run
        self.counts = counts
        self._sessions = {s: ort.InferenceSession(_matmuls_graph(s, c, rng), ort_session_options(threads),
                                                  providers=["CPUExecutionProvider"]) for s, c in counts.items()}
        self._feeds = {s: {"x": rng.standard_normal((s[0], s[1])).astype(np.float32)} for s in counts}
        self.rounds: list[dict[Shape, float]] = []  # per call, each shape's time (ms) for all its matmuls

    def run(self, _feeds: object = None) -> None:
        times: dict[Shape, float] = {}
        for shape, session in self._sessions.items():
            t0 = time.perf_counter()
            session.run(None, self._feeds[shape])
            times[shape] = (time.perf_counter() - t0) * 1e3
        self.rounds.append(times)

    def close(self) -> None:
        self._sessions.clear()

    def p50_ms(self, warmup: int) -> dict[Shape, float]:
        """Each shape's p50 (all its matmuls) over the calls after the first `warmup` (the bench's warm-up)."""
        timed = self.rounds[warmup:]
        return {s: float(np.percentile([r[s] for r in timed], 50)) for s in self.counts}


def summarize_independent(expected: list[ConfigMatmul], traced: list[WeightMatmul], times: ShapeTimes,
                          warmup: int, floor_ms: float) -> dict[str, object]:
    """The independent floor beside the bench's: counts against the graph's, the shapes' p50s summed, and its
    ratio to the bench's floor `floor_ms`."""
    p50 = times.p50_ms(warmup)
    independent_ms = sum(p50.values())
    differences = count_differences(expected, traced)
    ratio = independent_ms / floor_ms
    shapes = [{"m": m, "k": k, "n": n, "count": c, "p50_ms": p50[(m, k, n)] / c, "ms": p50[(m, k, n)]}
              for (m, k, n), c in times.counts.items()]
    return {"weight_matmuls": sum(w.count for w in expected), "gflop": sum(w.flops for w in expected) / 1e9,
            "counts_agree": not differences, "count_differences": differences, "floor_ms": independent_ms,
            "ratio": ratio, "agrees": abs(ratio - 1) <= AGREE_WITHIN,
            "shapes": sorted(shapes, key=lambda r: -r["ms"])}
