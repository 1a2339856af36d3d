"""Rollouts, pure: sticky assignment, the statistical gates, the canary's state machine."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from sluice.rollouts import assignment, canary, gates
from sluice.rollouts.canary import CanaryPlan, GateConfig, Window

# ---- assignment ---------------------------------------------------------------------------


def test_shares_are_honoured_over_many_subjects() -> None:
    shares = [("v2", 0.25), ("v1", 0.75)]
    picks = [assignment.choose(f"user-{i}", "rollout-1", shares) for i in range(20000)]
    assert abs(picks.count("v2") / len(picks) - 0.25) < 0.015


def test_a_user_in_the_canary_stays_in_it_as_its_share_grows() -> None:
    users = [f"user-{i}" for i in range(5000)]
    before = {u for u in users if assignment.choose(u, "s", [("v2", 0.05), ("v1", 0.95)]) == "v2"}
    after = {u for u in users if assignment.choose(u, "s", [("v2", 0.25), ("v1", 0.75)]) == "v2"}
    assert before and before <= after and len(after) > 3 * len(before)


def test_assignment_is_stable_across_processes_and_differs_by_salt() -> None:
    # BLAKE2b, not hash(): another process with another PYTHONHASHSEED agrees
    code = "from sluice.rollouts.assignment import bucket; print(repr(bucket('alice', 'r1')))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True,
                           timeout=60)
    assert float(other.stdout) == assignment.bucket("alice", "r1")
    users = [f"u{i}" for i in range(2000)]
    a = {u for u in users if assignment.bucket(u, "r1") < 0.1}
    b = {u for u in users if assignment.bucket(u, "r2") < 0.1}
    assert len(a & b) < 0.3 * len(a)  # another rollout draws other users


def test_the_subject_prefers_the_user_header_then_the_key_then_the_request() -> None:
    assert assignment.subject({"x-user": "u1"}, "k1", "r1", "x-user") == "h:u1"
    assert assignment.subject({}, "k1", "r1", "x-user") == "k:k1"
    assert assignment.subject({}, "", "r1", None) == "r:r1"


# ---- gates --------------------------------------------------------------------------------


def test_z_for_the_usual_confidences() -> None:
    assert gates.z_for(0.95) == pytest.approx(1.95996, abs=1e-4)
    assert gates.z_for(0.99) == pytest.approx(2.57583, abs=1e-4)


def test_the_difference_interval_matches_newcombes_worked_example() -> None:
    # Newcombe (1998), Table II, example (a): 56/70 - 48/80, method 10: [0.0524, 0.3339]
    lo, hi = gates.difference_interval(56, 70, 48, 80, gates.z_for(0.95))
    assert (lo, hi) == (pytest.approx(0.0524, abs=5e-4), pytest.approx(0.3339, abs=5e-4))


def test_the_error_gate_waits_breaches_and_passes() -> None:
    few = gates.error_gate(5, 50, 10, 5000, 0.01, 0.95, 200)
    assert few.verdict == "wait" and "200 needed" in few.detail
    worse = gates.error_gate(30, 400, 100, 10000, 0.01, 0.95, 200)  # 7.5% vs 1%
    assert worse.verdict == "breach" and worse.canary == 0.075 and worse.baseline == 0.01
    same = gates.error_gate(10, 2000, 100, 10000, 0.01, 0.95, 200)  # 0.5% vs 1%
    assert same.verdict == "pass"
    unclear = gates.error_gate(8, 400, 100, 10000, 0.01, 0.95, 200)  # 2% vs 1%: can't tell
    assert unclear.verdict == "wait"


def _lognormal(n: int, median_s: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [median_s * rng.lognormvariate(0, 0.5) for _ in range(n)]


def test_the_latency_gate_breaches_on_a_slower_canary_and_passes_an_equal_one() -> None:
    baseline = _lognormal(5000, 0.2, 1)
    slower = _lognormal(400, 0.3, 2)  # +50% everywhere, p95 included
    equal = _lognormal(1500, 0.2, 3)
    breach = gates.latency_gate("ttft", slower, baseline, 0.95, 1.2, 0.95, 200)
    assert breach.verdict == "breach" and breach.canary > 1.3 * breach.baseline
    assert gates.latency_gate("ttft", equal, baseline, 0.95, 1.2, 0.95, 200).verdict == "pass"
    assert gates.latency_gate("ttft", equal[:100], baseline, 0.95, 1.2, 0.95, 200
                              ).verdict == "wait"


# ---- the canary ---------------------------------------------------------------------------

PLAN = CanaryPlan("large", "v1", "v2", steps=(5, 25, 100), step_s=60, max_step_s=600,
                  gates=GateConfig(min_requests=100))
GOOD_BASE = Window(5000, 50, tuple(_lognormal(5000, 0.2, 4)), tuple(_lognormal(5000, 0.02, 5)))
GOOD_CANARY = Window(1000, 5, tuple(_lognormal(1000, 0.2, 6)), tuple(_lognormal(1000, 0.02, 7)))


def test_a_healthy_canary_holds_until_its_step_time_then_advances_to_promotion() -> None:
    state = canary.start(PLAN, now=0)
    assert state.share == 0.05
    held = canary.evaluate(state, 30, GOOD_CANARY, GOOD_BASE)
    assert held.step == 0 and held.status == "running"  # passing, but the step is young
    state = canary.evaluate(held, 61, GOOD_CANARY, GOOD_BASE)
    assert state.step == 1 and state.share == 0.25 and state.step_started == 61
    # passing the last step below 100% promotes: at 100% no baseline traffic is left to
    # compare with, so the canary never sits there waiting for a gate
    state = canary.evaluate(state, 122, GOOD_CANARY, GOOD_BASE)
    assert state.status == "promoted" and state.share == 1.0
    assert [h["event"] for h in state.history] == ["started", "advanced", "promoted"]


def test_a_breach_rolls_back_at_once_and_says_which_gate_and_both_measurements() -> None:
    failing = Window(400, 40, GOOD_CANARY.ttft_s, GOOD_CANARY.tpot_s)  # 10% vs 1%
    state = canary.evaluate(canary.start(PLAN, 0), 10, failing, GOOD_BASE)
    assert state.status == "rolled_back" and state.share == 0.0
    assert state.reason.startswith("error_rate: canary 10.00% of 400 vs baseline 1.00%")
    slow = Window(1000, 5, tuple(_lognormal(1000, 0.4, 8)), GOOD_CANARY.tpot_s)
    state = canary.evaluate(canary.start(PLAN, 0), 10, slow, GOOD_BASE)
    assert state.status == "rolled_back" and state.reason.startswith("ttft: canary p95")


def test_a_step_that_never_gathers_evidence_rolls_back_at_its_bound() -> None:
    thin = Window(20, 0, GOOD_CANARY.ttft_s[:20], GOOD_CANARY.tpot_s[:20])
    state = canary.evaluate(canary.start(PLAN, 0), 300, thin, GOOD_BASE)
    assert state.status == "running"
    state = canary.evaluate(state, 601, thin, GOOD_BASE)
    assert state.status == "rolled_back" and "not enough evidence" in state.reason


def test_operators_pause_resume_promote_and_abort() -> None:
    state = canary.pause(canary.start(PLAN, 0), 5)
    assert canary.evaluate(state, 500, GOOD_CANARY, GOOD_BASE) is state  # paused: frozen
    state = canary.resume(state, 500)
    assert state.status == "running" and state.step_started == 500
    assert canary.promote(state, 501).share == 1.0
    aborted = canary.abort(state, 501)
    assert aborted.status == "aborted" and aborted.share == 0.0
    assert canary.promote(aborted, 502) is aborted  # an ended rollout stays ended


@pytest.mark.parametrize("steps", [(), (5, 5, 100), (10, 50), (0, 100), (50, 10, 100),
                                   (100,)])
def test_a_plan_must_rise_to_100(steps) -> None:
    with pytest.raises(ValueError):
        CanaryPlan("large", "v1", "v2", steps=steps)


def test_how_long_a_step_needs_at_a_given_traffic() -> None:
    # 200 canary requests at 5% of 10 req/s: 400 s
    assert canary.windows_needed((5, 50), 10.0, 200) == [400.0, 40.0]


def test_the_agreement_gate_decides_on_enough_pairs_only() -> None:
    from sluice.rollouts.gates import agreement_gate

    assert agreement_gate(10, 10, 0.8, 0.95, 50).verdict == "wait"
    assert agreement_gate(50, 50, 0.9, 0.95, 50).verdict == "pass"  # lower bound 0.929
    assert agreement_gate(45, 50, 0.9, 0.95, 50).verdict == "wait"  # 90%: not shown either way
    breach = agreement_gate(30, 50, 0.9, 0.95, 50)
    assert breach.verdict == "breach" and breach.canary == 0.6
