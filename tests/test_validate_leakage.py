"""Leakage checks: clean data reports nothing; a planted leak is flagged by the check that covers its path."""

import numpy as np
import pandas as pd
import pytest

from dualhrq.errors import DataError
from dualhrq.evaluate.baselines import RidgeForecast
from dualhrq.evaluate.leakage import (
    FeatureProbe,
    LeakageReport,
    future_correlation,
    permuted_label_finding,
    truncation_check,
)

LAGS = (1, 5, 10, 20)


def random_walk(n=600, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2021-01-04", periods=n, freq="h")
    return pd.DataFrame({"close": 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))}, index=idx)


def causal_features(bars):
    """Past-only features: last return, 10-bar momentum, 20-bar volatility (NaN while warming up)."""
    r = np.log(bars["close"]).diff()
    return np.column_stack([r, r.rolling(10).sum(), r.rolling(20).std()])


def next_returns(bars):
    """returns[i]: what a position taken at bar i earns over the next bar (the label)."""
    return np.log(bars["close"]).diff().shift(-1).to_numpy()


def clean_matrix(bars):
    f, y = causal_features(bars), next_returns(bars)
    ok = np.isfinite(f).all(axis=1) & np.isfinite(y)
    return f[ok], y[ok]


def test_clean_features_show_no_future_correlation():
    features, returns = clean_matrix(random_walk())
    worst, findings = future_correlation(features, returns, lags=LAGS, max_corr=0.3, names=["r", "mom", "vol"])
    assert findings == []
    assert set(worst) == set(LAGS) and max(worst.values()) < 0.3


def test_a_feature_containing_the_label_is_flagged_at_lag_one():
    features, returns = clean_matrix(random_walk())
    noise = np.random.default_rng(1).normal(0, returns.std() * 0.5, len(returns))
    leaky = np.column_stack([features, returns + noise])
    _, findings = future_correlation(leaky, returns, lags=LAGS, max_corr=0.3, names=["r", "mom", "vol", "leak"])
    assert {f.subject for f in findings} == {"leak"}
    assert any("1 sample(s) ahead" in f.detail for f in findings)


def test_a_feature_shifted_the_wrong_way_is_flagged_at_its_lag():
    features, returns = clean_matrix(random_walk(seed=3))
    peek = np.roll(returns, -4)  # the return 5 samples ahead
    _, findings = future_correlation(
        np.column_stack([features, peek]), returns, lags=LAGS, max_corr=0.3, names=["r", "mom", "vol", "peek"]
    )
    assert [(f.subject, "5 sample(s) ahead" in f.detail) for f in findings] == [("peek", True)]


def probe(bars, fn):
    return FeatureProbe(len(bars), lambda c: fn(bars.iloc[:c]))


def test_causal_feature_function_passes_truncation():
    assert truncation_check(probe(random_walk(), causal_features), n_cuts=5, seed=0) == []


def test_feature_function_reading_later_bars_fails_truncation():
    def full_sample_zscore(bars):
        r = np.log(bars["close"]).diff()
        return ((r - r.mean()) / r.std()).to_numpy()[:, None]  # normalised with statistics of the whole sample

    def centred_window(bars):
        return np.log(bars["close"]).diff().rolling(5, center=True).mean().to_numpy()[:, None]

    for fn in (full_sample_zscore, centred_window):
        findings = truncation_check(probe(random_walk(), fn), n_cuts=3, seed=0)
        assert len(findings) == 3, fn.__name__
        assert all(f.check == "truncation" for f in findings)


def test_truncation_refuses_a_feature_function_that_drops_rows():
    with pytest.raises(DataError, match="rows"):
        truncation_check(probe(random_walk(), lambda b: causal_features(b)[20:]), n_cuts=2, seed=0)


def test_permuted_label_control_passes_an_honest_model_and_flags_one_that_reads_labels():
    features, returns = clean_matrix(random_walk(n=1200, seed=5))
    permuted = returns[np.random.default_rng(0).permutation(len(returns))]
    train, test = np.arange(0, 800), np.arange(820, len(returns))
    honest = RidgeForecast(features, permuted, alpha=1.0)
    honest.fit(train)
    assert permuted_label_finding("ridge", honest.predict(test).forecast, permuted[test]) == []
    # A "model" whose output is the label it is scored on, as a predictor that peeks at its labels would be.
    findings = permuted_label_finding("peeker", permuted[test], permuted[test])
    assert [f.subject for f in findings] == ["peeker"]


def test_report_fails_a_check_once_any_subject_fails():
    report = LeakageReport()
    report.record("future_correlation", [])
    assert report.checks["future_correlation"] == "passed" and not report.leak_found
    _, found = future_correlation(np.arange(50.0), np.arange(50.0), lags=(1,), max_corr=0.3, names=["x"])
    report.record("future_correlation", found)
    report.record("future_correlation", [])
    assert report.checks["future_correlation"] == "failed" and report.leak_found
    report.skip("truncation", "no bars")
    assert report.to_dict()["checks"]["truncation"] == "skipped: no bars"
