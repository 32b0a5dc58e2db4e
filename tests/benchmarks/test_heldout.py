"""The held-out benchmark's statistics: top-1 hits and the exact sign test (hand-computed
values)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.quality.heldout import seed_pair, sign_test, top1_hits


def test_sign_test_matches_the_binomial_by_hand():
    assert sign_test(0, 0) == 1.0
    assert sign_test(0, 5) == pytest.approx(2 / 32)  # all five discordant pairs one way
    assert sign_test(5, 0) == sign_test(0, 5)
    assert sign_test(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test(3, 3) == 1.0  # capped: both tails overlap
    # against a direct sum of the binomial pmf for a larger case
    n, k = 40, 12
    assert sign_test(k, n - k) == pytest.approx(
        2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    )


def test_top1_hits_take_the_best_row_and_break_ties_by_order():
    scores = np.array([[0.1, 0.9, 0.3], [0.5, 0.5, 0.1], [0.2, 0.1, 0.7]])
    relevant = [frozenset({1}), frozenset({1}), frozenset({0, 1})]
    assert top1_hits(scores, relevant).tolist() == [True, False, False]


def test_seed_zero_is_the_committed_demo():
    from demo.tools import demo_root

    assert seed_pair(0) == (demo_root() / "model", demo_root() / "corpus")


def test_p_values_keep_a_digit_that_is_not_zero():
    from benchmarks.quality.heldout import _p_value

    assert _p_value(0.0004) == "p < 0.001"
    assert _p_value(0.0044) == "p = 0.004"
    assert _p_value(0.33) == "p = 0.33"
