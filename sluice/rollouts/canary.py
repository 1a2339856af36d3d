"""A canary's state machine: steps of traffic share, gates at each step, rollback.

The plan: a model's `baseline` variant and the `candidate` that would replace it, the
candidate's share at each step (e.g. 5, 10, 25, 50, 100 percent) and how long a step lasts
at least. At every evaluation the gates (`sluice.rollouts.gates`) compare what the two
variants measured during the current step:
- any gate in `breach`: roll back at once (the candidate's share drops to 0), with the
  reason: which gate and both measurements;
- the step has lasted its time and every gate `pass`es: advance. Passing the step before
  100% promotes: the candidate takes all the traffic and the baseline is to be drained (at
  100% there is no baseline traffic left to compare with, so no gate could ever pass there);
- otherwise hold: the step goes on until the evidence decides (a step that never gathers
  enough requests holds; `max_step_s` then rolls back, as an unproven canary must not
  sit at a share forever).
Each step starts its measurements afresh, so a step's verdict rests on traffic at that
step's share. Pure: `evaluate` takes the state, the time and the measurements and returns
the new state; the ingress persists it (Redis) and applies its `share`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from sluice.rollouts.gates import GateResult, agreement_gate, error_gate, latency_gate

Status = Literal["running", "paused", "promoted", "rolled_back", "aborted"]
ENDED: tuple[Status, ...] = ("promoted", "rolled_back", "aborted")


@dataclass(frozen=True)
class GateConfig:
    confidence: float = 0.95
    min_requests: int = 200  # per variant and step, before any gate decides
    error_margin: float = 0.01  # the canary may fail at most 1 point more often
    latency_quantile: float = 0.95
    ttft_max_ratio: float = 1.2  # its p95 TTFT at most 1.2x the baseline's
    tpot_max_ratio: float = 1.2
    min_agreement: float | None = None  # quality: off unless set (see agreement_gate)
    min_pairs: int = 50  # compared pairs per step before the agreement gate decides


@dataclass(frozen=True)
class CanaryPlan:
    model: str
    baseline: str  # variant names, e.g. "v1"
    candidate: str
    steps: tuple[int, ...] = (5, 10, 25, 50, 100)  # percent of the model's traffic
    step_s: float = 600.0
    max_step_s: float = 7200.0
    gates: GateConfig = GateConfig()

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise ValueError("steps are percentages in (0, 100]")
        if (list(self.steps) != sorted(set(self.steps)) or self.steps[-1] != 100
                or len(self.steps) < 2):
            raise ValueError("steps rise strictly and end at 100, after at least one "
                             "share below it")
        if self.baseline == self.candidate:
            raise ValueError("the candidate must differ from the baseline")
        if self.max_step_s < self.step_s:
            raise ValueError("max_step_s must be at least step_s")


@dataclass(frozen=True)
class Window:
    """What one variant measured during the current step."""

    requests: int = 0
    errors: int = 0  # 5xx and engine failures (not client mistakes)
    ttft_s: tuple[float, ...] = ()
    tpot_s: tuple[float, ...] = ()
    agreed: int = 0  # the canary's: compared pairs whose answers agreed with the baseline's
    pairs: int = 0


@dataclass(frozen=True)
class CanaryState:
    plan: CanaryPlan
    status: Status = "running"
    step: int = 0  # index into plan.steps
    step_started: float = 0.0
    reason: str = ""  # why it ended (or was paused)
    gates: tuple[GateResult, ...] = ()  # the last evaluation's
    history: tuple[dict[str, object], ...] = field(default=())

    @property
    def share(self) -> float:
        """The candidate's share of the model's traffic now (0 to 1)."""
        if self.status == "promoted":
            return 1.0
        if self.status in ("rolled_back", "aborted"):
            return 0.0
        return self.plan.steps[self.step] / 100

    def _event(self, now: float, event: str, **kw: object) -> tuple[dict[str, object], ...]:
        return (*self.history, {"t": now, "event": event,
                                "share": self.plan.steps[self.step], **kw})


def start(plan: CanaryPlan, now: float) -> CanaryState:
    state = CanaryState(plan, step_started=now)
    return replace(state, history=state._event(now, "started"))


def judge(plan: CanaryPlan, canary: Window, baseline: Window) -> tuple[GateResult, ...]:
    g = plan.gates
    quality = () if g.min_agreement is None else (agreement_gate(
        canary.agreed, canary.pairs, g.min_agreement, g.confidence, g.min_pairs),)
    return (
        error_gate(canary.errors, canary.requests, baseline.errors, baseline.requests,
                   g.error_margin, g.confidence, g.min_requests),
        latency_gate("ttft", canary.ttft_s, baseline.ttft_s, g.latency_quantile,
                     g.ttft_max_ratio, g.confidence, g.min_requests),
        _tpot_gate(g, canary, baseline),
        *quality,
    )


def _tpot_gate(g: GateConfig, canary: Window, baseline: Window) -> GateResult:
    """TPOT exists only for streamed answers of two tokens or more. When both variants have
    answered enough requests but neither has enough such answers, the traffic has no TPOT
    to compare (it is not streamed): the gate does not apply, instead of holding the step
    until max_step_s rolls it back."""
    few = min(len(canary.tpot_s), len(baseline.tpot_s)) < g.min_requests
    if few and min(canary.requests, baseline.requests) >= g.min_requests and max(
            len(canary.tpot_s), len(baseline.tpot_s)) < g.min_requests:
        return GateResult("tpot", "pass", None, None,
                          f"not applicable: {len(canary.tpot_s)} canary / "
                          f"{len(baseline.tpot_s)} baseline streamed answers of 2+ tokens, "
                          f"{g.min_requests} needed")
    return latency_gate("tpot", canary.tpot_s, baseline.tpot_s, g.latency_quantile,
                        g.tpot_max_ratio, g.confidence, g.min_requests)


def evaluate(state: CanaryState, now: float, canary: Window, baseline: Window
             ) -> CanaryState:
    """The state after looking at this step's measurements (unchanged unless running)."""
    if state.status != "running":
        return state
    results = judge(state.plan, canary, baseline)
    breached = [r for r in results if r.verdict == "breach"]
    if breached:
        reason = "; ".join(f"{r.gate}: {r.detail}" for r in breached)
        return replace(state, status="rolled_back", reason=reason, gates=results,
                       history=state._event(now, "rolled_back", reason=reason))
    elapsed = now - state.step_started
    if elapsed >= state.plan.step_s and all(r.verdict == "pass" for r in results):
        if state.step + 2 >= len(state.plan.steps):  # the next step is 100%: promoted
            return replace(state, status="promoted", gates=results,
                           history=state._event(now, "promoted"))
        advanced = replace(state, step=state.step + 1, step_started=now, gates=results)
        return replace(advanced, history=advanced._event(now, "advanced"))
    if elapsed >= state.plan.max_step_s:
        waiting = [r for r in results if r.verdict == "wait"]
        reason = ("not enough evidence within max_step_s: "
                  + "; ".join(f"{r.gate}: {r.detail}" for r in waiting))
        return replace(state, status="rolled_back", reason=reason, gates=results,
                       history=state._event(now, "rolled_back", reason=reason))
    return replace(state, gates=results)


def pause(state: CanaryState, now: float) -> CanaryState:
    if state.status != "running":
        return state
    return replace(state, status="paused", history=state._event(now, "paused"))


def resume(state: CanaryState, now: float) -> CanaryState:
    """Back to running; the step starts over (its measurements are fresh again)."""
    if state.status != "paused":
        return state
    return replace(state, status="running", step_started=now,
                   history=state._event(now, "resumed"))


def promote(state: CanaryState, now: float) -> CanaryState:
    """An operator's decision: the candidate takes 100% now, gates or not."""
    if state.status in ENDED:
        return state
    return replace(state, status="promoted", reason="promoted by an operator",
                   history=state._event(now, "promoted", by="operator"))


def abort(state: CanaryState, now: float, why: str = "aborted by an operator"
          ) -> CanaryState:
    if state.status in ENDED:
        return state
    return replace(state, status="aborted", reason=why,
                   history=state._event(now, "aborted", reason=why))


def windows_needed(shares: Sequence[int], rate_rps: float, min_requests: int) -> list[float]:
    """Seconds each step needs before its canary has `min_requests` at `rate_rps` total
    traffic: the volume at which a step can decide at all."""
    return [min_requests / (rate_rps * s / 100) for s in shares]
