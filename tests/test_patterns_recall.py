import numpy as np
import pytest

from dualhrq.config import PatternsConfig
from dualhrq.errors import DataError
from dualhrq.patterns.recall import bench_index, real_embeddings


@pytest.fixture(scope="module")
def eurusd_embeddings() -> np.ndarray:
    """~5k real vectors: every EUR/USD hourly window of 24 bars."""
    return real_embeddings(16, windows=(24,), datasets=("eurusd_1h",))


def test_real_embeddings_cover_every_complete_window(eurusd_embeddings):
    assert eurusd_embeddings.shape == (5000 - 24, 16)
    assert eurusd_embeddings.dtype == np.float32 and np.isfinite(eurusd_embeddings).all()


def test_recall_at_default_ef_is_at_least_095_on_real_data(eurusd_embeddings):
    result = bench_index(eurusd_embeddings, PatternsConfig(), k=8, ef_values=(1, PatternsConfig().ef),
                         n_queries=150)
    low, default = result.points
    assert default.recall >= 0.95
    assert low.recall < default.recall  # the graph, not an exact fallback, answered
    assert result.entries == len(eurusd_embeddings) - 150 and result.index_bytes > 0
    assert 0 < default.p50_us <= default.p99_us


def test_bench_refuses_sizes_the_library_would_search_exactly():
    with pytest.raises(DataError, match="exactly"):
        bench_index(np.random.default_rng(0).normal(size=(1000, 4)), PatternsConfig(), n_queries=10)
