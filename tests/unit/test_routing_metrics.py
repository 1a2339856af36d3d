import numpy as np
import pytest

from sluice.router.metrics import (
    oracle_curve,
    random_curve,
    relative_cost,
    routing_curve,
    threshold_for_share,
)

SMALL = np.array([1, 1, 0, 0, 1, 0, 1, 0], dtype=float)
LARGE = np.array([1, 1, 1, 1, 0, 1, 1, 0], dtype=float)


def test_endpoints_are_always_small_and_always_large() -> None:
    curve = routing_curve(np.random.default_rng(0).random(8), SMALL, LARGE)
    assert curve.quality[0] == pytest.approx(SMALL.mean())
    assert curve.quality[-1] == pytest.approx(LARGE.mean())


def test_random_routing_has_apgr_one_half_and_linear_cpt() -> None:
    curve = random_curve(SMALL, LARGE)
    assert curve.apgr == pytest.approx(0.5)
    assert curve.cpt(0.5) == pytest.approx(0.5)
    assert curve.cpt(0.8) == pytest.approx(0.8)


def test_a_perfect_score_matches_the_oracle() -> None:
    # score = "small is enough": escalate exactly where large is strictly better first
    perfect = -(LARGE - SMALL)
    assert routing_curve(perfect, SMALL, LARGE).apgr == pytest.approx(
        oracle_curve(SMALL, LARGE).apgr)
    oracle = oracle_curve(SMALL, LARGE)
    # escalating the three queries only the large model gets right beats always-large
    assert oracle.quality_at(3 / 8) == pytest.approx(7 / 8)
    assert oracle.quality.max() == pytest.approx(7 / 8)


def test_an_inverted_score_is_worse_than_random() -> None:
    inverted = LARGE - SMALL
    assert routing_curve(inverted, SMALL, LARGE).apgr < 0.5


def test_relative_cost_of_cascade_includes_the_small_call() -> None:
    assert relative_cost(0.0, 20, cascade=False) == pytest.approx(1 / 20)
    assert relative_cost(1.0, 20, cascade=False) == pytest.approx(1.0)
    assert relative_cost(1.0, 20, cascade=True) == pytest.approx(21 / 20)
    assert relative_cost(0.5, 20, cascade=True) == pytest.approx(11 / 20)


def test_threshold_for_share_escalates_that_share() -> None:
    scores = np.linspace(0, 1, 100)
    t = threshold_for_share(scores, 0.3)
    assert (scores < t).mean() == pytest.approx(0.3)
    assert (scores < threshold_for_share(scores, 0)).mean() == 0
    assert (scores < threshold_for_share(scores, 1)).mean() == 1
