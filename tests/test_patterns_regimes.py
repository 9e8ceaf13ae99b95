import numpy as np
import pytest

from dualhrq.errors import DataError
from dualhrq.patterns.regimes import RegimeModel, fit_regimes, regime_summary

VOLS = (3.0, 1.0, 2.0)  # cluster c has volatility VOLS[c]: k-means ids would follow data order, regimes follow vol


def clustered(n_per: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    blocks, truth = [], []
    for c, vol in enumerate(VOLS):
        x = rng.normal(scale=0.1, size=(n_per, 20))
        x[:, 0] += vol
        x[:, 1:4] += 5 * c
        blocks.append(x)
        truth += [c] * n_per
    return np.concatenate(blocks), np.array(truth)


def test_regimes_are_numbered_from_calmest_to_most_volatile():
    x, truth = clustered()
    model = fit_regimes(x, n_regimes=3, seed=0)
    ids = model.predict(x)
    expected = np.argsort(np.argsort(VOLS))[truth]  # rank of each cluster's volatility
    assert (ids == expected).all()
    assert np.all(np.diff(model.mean_vol) > 0)


def test_explicit_vol_orders_the_regimes():
    x, truth = clustered()
    model = fit_regimes(x, n_regimes=3, seed=0, vol=-x[:, 0])
    assert (model.predict(x) == np.argsort(np.argsort(-np.array(VOLS)))[truth]).all()


def test_fit_is_deterministic_for_a_seed_and_round_trips():
    x, _ = clustered(seed=3)
    noisy = x + np.random.default_rng(1).normal(scale=2.0, size=x.shape)  # overlapping clusters: seed matters
    a, b = fit_regimes(noisy, 4, seed=7), fit_regimes(noisy, 4, seed=7)
    assert np.array_equal(a.centers, b.centers)
    restored = RegimeModel.from_dict(a.to_dict())
    assert (restored.predict(noisy) == a.predict(noisy)).all()


def test_bad_regime_features_are_refused_by_name():
    x, _ = clustered()
    x[5, 3] = np.nan
    with pytest.raises(DataError, match="regime_features"):
        fit_regimes(x, 3, seed=0)
    with pytest.raises(DataError, match="expected 20 features"):
        fit_regimes(clustered()[0], 3, seed=0).predict(np.zeros((2, 19)))


def test_summary_reports_share_vol_return_and_switch_rates():
    hour = 3600 * 10**9
    ids = np.array([0, 0, 1, 1, 1, 0, 0, 0, 2, 2])
    t = np.arange(10) * 6 * hour  # 9 steps of 6 h = 2.25 days
    returns = np.arange(10, dtype=float)
    vol = np.array([1, 1, 2, 2, 2, 1, 1, 1, 3, 3], dtype=float)
    s = regime_summary(ids, returns, vol, t, n_regimes=4)
    assert [r.share for r in s.regimes] == pytest.approx([0.5, 0.3, 0.2, 0.0])
    assert [r.mean_vol for r in s.regimes[:3]] == pytest.approx([1, 2, 3])
    assert s.regimes[1].mean_return == pytest.approx(3.0)
    assert np.isnan(s.regimes[3].mean_return)
    assert s.switches_per_day == pytest.approx(3 / 2.25)
    assert s.switch_rate == pytest.approx(3 / 9)
    assert [r.exits_per_day for r in s.regimes] == pytest.approx([2 / 2.25, 1 / 2.25, 0, 0])
