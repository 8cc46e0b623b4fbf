"""Pearson, Spearman and slope against plain-Python float64 references."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhf_jax.evaluation import correlation, pearson, rankdata, slope, spearman


def pearson_reference(x, y):
    n = len(x)
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy)


def ranks_reference(x):
    """Average rank: values below, plus the mean position among equal values."""
    return [sum(v < a for v in x) + (sum(v == a for v in x) + 1) / 2 for a in x]


values = st.lists(st.integers(-5, 5).map(float), min_size=3, max_size=30)


@given(st.data())
def test_pearson_and_spearman_match_references(data):
    x = data.draw(values)
    y = data.draw(st.lists(st.floats(-10, 10), min_size=len(x), max_size=len(x)))
    rx, ry = ranks_reference(x), ranks_reference(y)
    np.testing.assert_array_equal(rankdata(x), rx)
    if len(set(x)) > 1 and len(set(y)) > 1:
        assert pearson(x, y) == pytest.approx(pearson_reference(x, y), abs=1e-12)
        assert spearman(x, y) == pytest.approx(pearson_reference(rx, ry), abs=1e-12)
    else:
        assert math.isnan(pearson(x, y)) and math.isnan(spearman(x, y))


def test_closed_forms():
    x = np.arange(10.0)
    assert pearson(x, 3 * x + 1) == 1.0
    assert pearson(x, -x) == -1.0
    assert spearman(x, np.exp(x)) == 1.0  # monotone, not linear
    assert pearson(x, np.exp(x)) < 1.0
    assert spearman(x, x[::-1] ** 3) == -1.0
    assert correlation(x, x, method="pearson") == 1.0
    with pytest.raises(ValueError, match="method="):
        correlation(x, x, method="kendall")


def test_slope():
    t = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert slope(t, [1.0, 3.0, 5.0, 7.0, 9.0]) == pytest.approx(2.0, abs=1e-15)
    rng = np.random.default_rng(0)
    t, y = rng.normal(size=20), rng.normal(size=20)
    tm, ym = math.fsum(t) / 20, math.fsum(y) / 20
    ref = math.fsum((a - tm) * (b - ym) for a, b in zip(t, y, strict=True)) / math.fsum(
        (a - tm) ** 2 for a in t
    )
    assert slope(t, y) == pytest.approx(ref, abs=1e-13)
    with pytest.raises(ValueError, match="distinct"):
        slope([1.0, 1.0], [0.0, 1.0])


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "x has 3, y has 2"),
        ([1.0], [1.0], "at least 2"),
        ([1.0, np.inf], [1.0, 2.0], "x has a non-finite value"),
    ],
)
def test_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        pearson(x, y)
    with pytest.raises(ValueError, match=match):
        spearman(x, y)
