"""One rollout as data: what it is, where it stands, and the operations that move it.

A rollout is stored whole (JSON, `sluice.rollouts.store`) and every ingress replica applies
it the same way: `shares()` is the split of the model's traffic between the baseline (the
catalog model that served it before) and the candidate (`model@to`). A canary's steps and
gates are `sluice.rollouts.canary`'s state machine, kept inside; an A/B test holds its split
until an operator ends it; a shadow never gives the candidate any user's request.
`version` counts the writes, so a write based on a stale read is refused (the store's
compare-and-set) instead of undoing another replica's decision.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from typing import Any

from sluice.rollouts import canary
from sluice.rollouts.canary import ENDED, CanaryPlan, CanaryState, GateConfig, Status, Window
from sluice.rollouts.gates import GateResult
from sluice.schema.rollouts import RolloutSpec


@dataclass(frozen=True)
class Rollout:
    id: str
    spec: RolloutSpec
    baseline: str  # the catalog model that answers the rest of the traffic
    salt: str  # of the sticky assignment: each rollout draws its own users
    created: float
    status: Status = "running"
    reason: str = ""
    history: tuple[dict[str, Any], ...] = ()
    canary: CanaryState | None = None  # a canary's steps and last gate results
    retired: str = ""  # what became of the variant that lost: "" until it is drained
    version: int = 0

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def candidate(self) -> str:
        return self.spec.candidate

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def winner(self) -> str:
        """Who keeps the model's traffic once this rollout is over."""
        return self.candidate if self.status == "promoted" else self.baseline

    @property
    def loser(self) -> str | None:
        """The variant to drain once this rollout is over (None while it runs)."""
        if not self.ended:
            return None
        return self.baseline if self.status == "promoted" else self.candidate

    def share(self) -> float:
        """The candidate's share of the model's user traffic now (0 to 1)."""
        if self.spec.kind == "shadow" or self.status in ("rolled_back", "aborted"):
            return 0.0
        if self.status == "promoted":
            return 1.0
        if self.canary is not None:
            return self.canary.share
        return self.spec.percent / 100

    def shares(self) -> list[tuple[str, float]]:
        """The split, candidate first (its range of the sticky buckets only grows)."""
        s = self.share()
        return [(self.candidate, s), (self.baseline, 1.0 - s)]

    def shadow_fraction(self) -> float:
        """The share of the model's requests also sent to the candidate, in the shadow."""
        if self.spec.kind != "shadow" or self.status not in ("running",):
            return 0.0
        return self.spec.percent / 100

    def step_started(self) -> float:
        """Since when the current measurements count (a canary's step; else the start)."""
        return self.canary.step_started if self.canary is not None else self.created

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            # split_by unset is left out, so an ingress replica of the version before it
            # (which forbids unknown fields) still reads rollouts mid-upgrade
            "id": self.id, "spec": self.spec.model_dump(
                mode="json", exclude={"split_by"} if self.spec.split_by is None else None),
            "baseline": self.baseline,
            "salt": self.salt, "created": self.created, "status": self.status,
            "reason": self.reason, "history": list(self.history), "retired": self.retired,
            "version": self.version}
        if self.canary is not None:
            c = self.canary
            out["canary"] = {"plan": dataclasses.asdict(c.plan), "status": c.status,
                             "step": c.step, "step_started": c.step_started,
                             "reason": c.reason, "gates": [g.as_dict() for g in c.gates],
                             "history": list(c.history)}
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Rollout:
        d = json.loads(text)
        state = None
        if d.get("canary"):
            c = d["canary"]
            plan = dict(c["plan"])
            plan["steps"] = tuple(plan["steps"])
            plan["gates"] = GateConfig(**plan["gates"])
            state = CanaryState(CanaryPlan(**plan), status=c["status"], step=c["step"],
                                step_started=c["step_started"], reason=c["reason"],
                                gates=tuple(GateResult(**g) for g in c["gates"]),
                                history=tuple(c["history"]))
        return cls(d["id"], RolloutSpec.model_validate(d["spec"]), d["baseline"], d["salt"],
                   d["created"], d["status"], d["reason"], tuple(d["history"]), state,
                   d.get("retired", ""), d.get("version", 0))

    def view(self) -> dict[str, Any]:
        """What `sluice rollout status` and `GET /v1/admin/rollouts/{model}` show."""
        d = self.as_dict()
        d.pop("salt")
        d["candidate"] = self.candidate
        d["share_percent"] = round(self.share() * 100, 3)
        if self.spec.kind == "shadow":
            d["shadow_percent"] = round(self.shadow_fraction() * 100, 3)
        return d


def _event(r: Rollout, now: float, event: str, **kw: Any) -> tuple[dict[str, Any], ...]:
    return (*r.history, {"t": now, "event": event, "share": round(r.share() * 100, 3), **kw})


def _gates(spec: RolloutSpec) -> GateConfig:
    g = spec.gates
    return GateConfig(confidence=g.confidence, min_requests=g.min_requests,
                      error_margin=g.error_margin, latency_quantile=g.latency_quantile,
                      ttft_max_ratio=g.ttft_max_ratio, tpot_max_ratio=g.tpot_max_ratio,
                      min_agreement=g.min_agreement, min_pairs=g.min_pairs)


def begin(rollout_id: str, spec: RolloutSpec, baseline: str, now: float) -> Rollout:
    """A new rollout at its first step."""
    state = None
    if spec.kind == "canary":
        plan = CanaryPlan(spec.model, baseline, spec.candidate, spec.steps, spec.step_s,
                          spec.max_step_s, _gates(spec))
        state = canary.start(plan, now)
    r = Rollout(rollout_id, spec, baseline, f"{rollout_id}:{now:.6f}", now, canary=state)
    return replace(r, history=_event(r, now, "started", kind=spec.kind))


def _synced(r: Rollout, state: CanaryState, now: float) -> Rollout:
    """The rollout after its canary moved: status, reason and an event if it changed."""
    moved = (state.status, state.step) != (r.canary.status, r.canary.step) if r.canary else True
    out = replace(r, canary=state, status=state.status, reason=state.reason)
    if moved:
        last = dict(state.history[-1]) if state.history else {"event": state.status}
        last.pop("t", None)
        last.pop("share", None)
        out = replace(out, history=_event(out, now, str(last.pop("event")), **last))
    return out


def evaluate(r: Rollout, now: float, candidate: Window, baseline: Window) -> Rollout:
    """A canary judged on its current step's measurements (others: unchanged)."""
    if r.canary is None or r.status != "running":
        return r
    return _synced(r, canary.evaluate(r.canary, now, candidate, baseline), now)


def pause(r: Rollout, now: float) -> Rollout:
    if r.status != "running":
        return r
    if r.canary is not None:
        return _synced(r, canary.pause(r.canary, now), now)
    return replace(r, status="paused", history=_event(r, now, "paused"))


def resume(r: Rollout, now: float) -> Rollout:
    if r.status != "paused":
        return r
    if r.canary is not None:
        return _synced(r, canary.resume(r.canary, now), now)
    return replace(r, status="running", history=_event(r, now, "resumed"))


def promote(r: Rollout, now: float) -> Rollout:
    """An operator's decision: the candidate takes all the traffic now."""
    if r.ended:
        return r
    if r.canary is not None:
        return _synced(r, canary.promote(r.canary, now), now)
    return replace(r, status="promoted", reason="promoted by an operator",
                   history=_event(r, now, "promoted", by="operator"))


def abort(r: Rollout, now: float, why: str = "aborted by an operator") -> Rollout:
    if r.ended:
        return r
    if r.canary is not None:
        return _synced(r, canary.abort(r.canary, now, why), now)
    return replace(r, status="aborted", reason=why,
                   history=_event(r, now, "aborted", reason=why))


def retired(r: Rollout, now: float, what: str) -> Rollout:
    """The losing variant was drained (and removed, or why not)."""
    return replace(r, retired=what, history=_event(r, now, "retired", variant=r.loser,
                                                   result=what))
