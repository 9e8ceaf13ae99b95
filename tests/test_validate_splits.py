"""Walk-forward and CPCV splits: no label overlap, gaps, order and coverage hold for any data and settings."""

from math import comb

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dualhrq.config import ValidateConfig
from dualhrq.data.splits import cpcv_paths, cpcv_splits, walk_forward_splits
from dualhrq.errors import ConfigurationError, DataError

ONE = ValidateConfig(train_bars=1, test_bars=1, step_bars=1, purge_bars=0, embargo_bars=0)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def label_times(draw, min_n=20, max_n=240):
    """Increasing sample times with irregular gaps and label intervals of random length (0 to ~15 samples)."""
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.integers(1, 4, n)).astype(np.int64)
    t_known = t + rng.integers(0, 30, n)
    return t, t_known


def overlaps(t, t_known, train, test):
    """Brute force: does any training label interval touch any test label interval?"""
    a0, a1 = t[train][:, None], t_known[train][:, None]
    b0, b1 = t[test][None, :], t_known[test][None, :]
    return bool(((a0 <= b1) & (b0 <= a1)).any())


def blocks(test):
    return np.split(test, np.flatnonzero(np.diff(test) != 1) + 1)


def _cpcv(n_groups, k_test, purge_bars, embargo_bars):
    return ValidateConfig(scheme="cpcv", cpcv_groups=n_groups, cpcv_test_groups=k_test, purge_bars=purge_bars,
                          embargo_bars=embargo_bars)


def assert_gaps(train, test, purge_bars, embargo_bars):
    for block in blocks(test):
        before = np.arange(max(block[0] - purge_bars, 0), block[0])
        after = np.arange(block[-1] + 1, block[-1] + 1 + embargo_bars)
        assert not np.isin(train, before).any(), "a training sample sits in the purge gap"
        assert not np.isin(train, after).any(), "a training sample sits in the embargo"


@FAST
@given(
    data=label_times(),
    train_bars=st.integers(1, 80),
    test_bars=st.integers(1, 40),
    extra_step=st.integers(0, 15),
    purge_bars=st.integers(0, 10),
    embargo_bars=st.integers(0, 10),
    anchored=st.booleans(),
)
def test_walk_forward_splits_never_overlap_labels_and_cover_their_windows(
    data, train_bars, test_bars, extra_step, purge_bars, embargo_bars, anchored
):
    t, t_known = data
    n = len(t)
    step = test_bars + extra_step
    assume(train_bars + purge_bars + test_bars <= n)
    try:
        splits = walk_forward_splits(
            ValidateConfig(train_bars=train_bars, test_bars=test_bars, step_bars=step,
                           purge_bars=purge_bars, embargo_bars=embargo_bars, anchored=anchored),
            t, t_known,
        )
    except ConfigurationError:
        assume(False)  # labels so long that a split has nothing left to train on: refused, not invented
    first = train_bars + purge_bars
    assert [s.test[0] for s in splits] == list(range(first, n - test_bars + 1, step))
    last = splits[-1].test[0]
    assert last + step + test_bars > n, "a further whole test window would have fit"
    for s in splits:
        assert np.array_equal(s.test, np.arange(s.test[0], s.test[0] + test_bars))
        assert np.all(np.diff(s.train) > 0)
        assert s.train[-1] < s.test[0] - purge_bars, "walk-forward trains only on the past, before the purge gap"
        assert not overlaps(t, t_known, s.train, s.test)
        assert_gaps(s.train, s.test, purge_bars, embargo_bars)
        # Nothing is dropped beyond what the purge needs: the training window minus overlapping labels.
        window_start = 0 if anchored else s.test[0] - purge_bars - train_bars
        window = np.arange(window_start, s.test[0] - purge_bars)
        needed = window[t_known[window] >= t[s.test[0]]]
        assert np.array_equal(s.train, np.setdiff1d(window, needed))


@FAST
@given(
    data=label_times(min_n=30),
    n_groups=st.integers(2, 7),
    k_frac=st.floats(0, 1),
    purge_bars=st.integers(0, 6),
    embargo_bars=st.integers(0, 6),
)
def test_cpcv_counts_purge_and_paths(data, n_groups, k_frac, purge_bars, embargo_bars):
    t, t_known = data
    k = 1 + int(k_frac * (n_groups - 2))
    try:
        cv = cpcv_splits(_cpcv(n_groups, k, purge_bars, embargo_bars), t, t_known)
    except ConfigurationError:
        assume(False)
    phi = comb(n_groups - 1, k - 1)
    assert len(cv.splits) == comb(n_groups, k)
    assert len(cv.paths) == phi
    assert np.array_equal(np.concatenate(cv.groups), np.arange(len(t)))
    for s in cv.splits:
        assert not np.isin(s.train, s.test).any()
        assert not overlaps(t, t_known, s.train, s.test)
        assert_gaps(s.train, s.test, purge_bars, embargo_bars)
        assert np.array_equal(s.test, np.concatenate([cv.groups[g] for g in s.test_groups]))
    for path in cv.paths:
        # Every group once per path, each from a split that really tested it: the path is a full backtest.
        assert all(g in cv.splits[s].test_groups for g, s in enumerate(path))
    for g in range(n_groups):
        assert sorted(p[g] for p in cv.paths) == [s.index for s in cv.splits if g in s.test_groups]


def test_cpcv_counts_for_the_textbook_case():
    """López de Prado's example: N = 6, k = 2 gives 15 splits and 5 backtest paths."""
    paths = cpcv_paths(6, 2)
    assert len(paths) == 5
    assert all(len(p) == 6 for p in paths)
    t = np.arange(60, dtype=np.int64)
    cv = cpcv_splits(_cpcv(6, 2, 0, 0), t, t + 2)
    assert len(cv.splits) == 15


def test_cpcv_purges_training_labels_that_reach_into_the_test_group():
    t = np.arange(30, dtype=np.int64)
    t_known = t + 3  # each label needs the next 3 samples
    cv = cpcv_splits(_cpcv(3, 1, 0, 2), t, t_known)
    middle = next(s for s in cv.splits if s.test_groups == (1,))
    # Test is 10..19, its labels end at 22: samples 7..9 have labels ending inside it, 20..22 start before its
    # labels end (and 20..21 are embargoed as well); training resumes at 23.
    assert np.array_equal(middle.train, np.r_[0:7, 23:30])


def test_walk_forward_refuses_too_little_data_naming_the_sizes():
    t = np.arange(50, dtype=np.int64)
    with pytest.raises(ConfigurationError, match="train_bars"):
        walk_forward_splits(ValidateConfig(train_bars=40, test_bars=10, step_bars=10, purge_bars=5, embargo_bars=0),
                            t, t + 1)


def test_unsorted_times_or_labels_known_too_early_are_refused():
    t = np.array([0, 2, 1, 3], dtype=np.int64)
    with pytest.raises(DataError, match="strictly increasing"):
        walk_forward_splits(ONE, t, t + 1)
    t = np.arange(4, dtype=np.int64)
    with pytest.raises(DataError, match="t_known"):
        walk_forward_splits(ONE, t, t - 1)
