from pathlib import Path

import numpy as np
import pytest
from subcommand import run_subcommand

from dualhrq.config import load_config
from dualhrq.data.sources import load_dataset
from dualhrq.errors import ModelLoadError
from dualhrq.patterns.artifacts import load_artifacts
from dualhrq.patterns.build import build_library
from dualhrq.patterns.commands import register
from dualhrq.patterns.retriever import Retriever

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def goog_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "goog.yaml"
    path.write_text(f"base: {ROOT / 'config' / 'hrm_tiny.yaml'}\ndata: {{dataset: goog_1d}}\n")
    return path


def run(argv: list[str]) -> int:
    return run_subcommand(register, *argv)


@pytest.fixture(scope="module")
def built(goog_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("patterns") / "goog"
    assert run(["index", "build", "--config", str(goog_config), "--out", str(out)]) == 0
    return out


def test_index_build_holds_only_outcomes_known_in_the_training_window(built, goog_config):
    cfg = load_config(goog_config)
    library, encoder, regimes = load_artifacts(built, cfg.patterns)
    bars = load_dataset("goog_1d").bars
    last_train_t = bars.t[int(len(bars) * cfg.data.train_fraction) - 1]
    probe = np.random.default_rng(0).normal(size=(1, library.dim)).astype(np.float32)
    hits = library.query(probe, as_of=np.iinfo(np.int64).max, k=len(library))
    assert (hits.count == len(library)).all() and len(library) > 1000
    assert hits.available_at.max() <= last_train_t
    assert set(np.unique(hits.regime)) <= set(range(regimes.n_regimes))
    assert library.outcome_scale == pytest.approx(np.std(hits.outcome), rel=1e-3)


def test_built_artifacts_serve_retrieval(built, goog_config):
    cfg = load_config(goog_config)
    library, encoder, _ = load_artifacts(built, cfg.patterns)
    retriever = Retriever(library, encoder, cfg.patterns, cfg.model.pattern_dim, cfg.model.pattern_k)
    features = np.random.default_rng(1).normal(size=(2, encoder.feature_dim))
    # Not a deadline test: a loaded machine may take seconds over the first query (the worker's start).
    result = retriever.retrieve(features, as_of=np.iinfo(np.int64).max, timeout_s=30.0)
    assert result.reason is None and result.used.tolist() == [cfg.model.pattern_k] * 2
    retriever.close()


def test_tampered_encoder_is_refused(built, tmp_path):
    copy = tmp_path / "copy"
    for f in built.rglob("*"):
        if f.is_file():
            (copy / f.relative_to(built)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(built)).write_bytes(f.read_bytes())
    (copy / "encoder.json").write_text((copy / "encoder.json").read_text().replace("1", "2", 1))
    with pytest.raises(ModelLoadError, match="encoder.json"):
        load_artifacts(copy)


def test_regimes_command_reports_every_regime(goog_config, capsys):
    assert run(["regimes", "--config", str(goog_config)]) == 0
    out = capsys.readouterr().out
    n = load_config(goog_config).model.num_regimes
    rows = [line for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r.split()[0]) for r in rows] == list(range(n))
    assert "switches per day" in out


def test_until_ns_cuts_the_training_window_before_that_time(goog_config):
    cfg = load_config(goog_config)
    bars = load_dataset("goog_1d").bars
    cut = int(bars.t[1200])
    library, _, _ = build_library(cfg.model, cfg.patterns, cfg.data, until_ns=cut)
    hits = library.query(np.zeros((1, library.dim), np.float32), as_of=np.iinfo(np.int64).max, k=len(library))
    assert hits.available_at.max() == bars.t[1199]  # the last outcome known before the cut


def test_fit_spans_keep_every_entry_inside_one_span(goog_config):
    """Spans around a left-out stretch (as CPCV's test groups are): each span is a training window of its own,
    so no entry's pattern window or outcome reaches into the stretch or across it."""
    cfg = load_config(goog_config)
    t = load_dataset("goog_1d").bars.t
    spans = [(int(np.iinfo(np.int64).min), int(t[1000])), (int(t[1200]), int(np.iinfo(np.int64).max))]
    library, _, _ = build_library(cfg.model, cfg.patterns, cfg.data, fit_spans=spans)
    hits = library.query(np.zeros((1, library.dim), np.float32), as_of=np.iinfo(np.int64).max, k=len(library))
    start, end = hits.window_start[0], hits.available_at[0]
    in_span = [(start >= lo) & (end < hi) for lo, hi in spans]
    assert (in_span[0] | in_span[1]).all() and in_span[0].any() and in_span[1].any()
    assert end[in_span[0]].max() == t[999] and start[in_span[1]].min() >= t[1200]
