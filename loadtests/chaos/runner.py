"""One scenario: the load and the fault's steps on one clock, then the verdict.

The load runs on the asyncio loop; each step runs in a thread at its time (finding and
killing a process, or starting redis-server, blocks), so the load keeps its rate while a
fault is injected. After the last request has its outcome, each is classified, the
success rate and the time to recovery are computed from send times, and the ledger is
checked against the requests Sluice accepted.
"""

from __future__ import annotations

import asyncio
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loadtests.chaos import load, timeline
from loadtests.chaos.faults import Faults
from loadtests.chaos.ledger_check import LedgerCheck, check
from loadtests.chaos.outcomes import OK, Observation, classify_all, examples, summarize
from loadtests.chaos.scenarios import Scenario


@dataclass
class ScenarioResult:
    name: str
    fault: str
    fault_at_s: float  # when the first step actually ran
    duration_s: float
    steps: list[dict[str, Any]]
    counts: dict[str, int]
    recovery_s: float | None
    ledger: LedgerCheck
    observations: list[Observation] = field(repr=False, default_factory=list)

    def series(self, window_s: float = timeline.WINDOW_S) -> list[tuple[float, float | None]]:
        """Success rate over time, seconds relative to the fault."""
        points = [(o.sent_s - self.fault_at_s, o.kind == OK) for o in self.observations]
        return timeline.success_rate(points, -self.fault_at_s,
                                     self.duration_s - self.fault_at_s, window_s)

    def as_dict(self, with_requests: bool = True) -> dict[str, Any]:
        out = {"name": self.name, "fault": self.fault, "fault_at_s": self.fault_at_s,
               "duration_s": self.duration_s, "steps": self.steps, "counts": self.counts,
               "recovery_s": self.recovery_s, "ledger": self.ledger.as_dict(),
               "examples": examples(self.observations)}
        if with_requests:
            out["requests"] = [o.as_dict() for o in self.observations]
        return out


def _say(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


async def _steps(scenario: Scenario, faults: Faults, started: float,
                 say: Callable[[str], None]) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    for step in scenario.steps:
        delay = started + step.at_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        at = time.monotonic() - started
        try:
            details = await asyncio.get_running_loop().run_in_executor(
                faults.executor, step.act, faults)
            error = ""
        except Exception as exc:  # noqa: BLE001 - a fault that failed is a result too
            details, error = {}, repr(exc)
        # a kill may first wait for a request in flight: `done_s` is when it struck
        end = time.monotonic() - started
        done.append({"at_s": round(at, 2), "done_s": round(end, 2), "what": step.what,
                     "error": error, **details})
        say(f"{scenario.name} t={end:.1f}s: {step.what} {details or ''}{error}")
    return done


def _progress(name: str, say: Callable[[str], None]) -> load.Progress:
    def report(t: float, finished: list[Observation], in_flight: int) -> None:
        ok = sum(1 for o in finished if o.status == 200 and (o.body_ok or o.done)
                 and not o.error_event)
        failed = len(finished) - ok
        say(f"{name} t={t:.0f}s: {len(finished)} done ({ok} ok, {failed} not), "
            f"{in_flight} in flight")
    return report


def run_scenario(scenario: Scenario, faults: Faults, base_url: str, redis_url: str,
                 spec: load.LoadSpec, seed: int, run_id: str,
                 say: Callable[[str], None] = _say, ledger_timeout_s: float = 30.0
                 ) -> ScenarioResult:
    """Run one scenario end to end (blocking); the stack must be healthy before."""
    prefix = f"chaos-{run_id}-{scenario.name}"
    requests = load.plan(spec, seed ^ zlib.crc32(scenario.name.encode()), prefix)
    say(f"{scenario.name}: {len(requests)} requests over {spec.duration_s:g} s "
        f"({spec.rate:g}/s); fault: {scenario.fault}")
    since_ms = int(time.time() * 1000) - 1000

    traffic = load.Traffic()
    faults.traffic = traffic  # the kills pick the replica the load is using

    async def both() -> tuple[list[Observation], list[dict[str, Any]]]:
        started = time.monotonic()
        return await asyncio.gather(
            load.run(base_url, requests, spec, started, _progress(scenario.name, say),
                     traffic=traffic),
            _steps(scenario, faults, started, say))

    try:
        observations, steps = asyncio.run(both())
    finally:
        faults.traffic = None
    fault_at = steps[0]["done_s"] if steps else scenario.fault_at_s
    killed = fault_at if scenario.kills_ingress else None
    classify_all(observations, killed)
    counts = summarize(observations)
    points = [(o.sent_s, o.kind == OK) for o in observations]
    recovery = timeline.recovery_s(points, fault_at)
    accepted = {o.request_id for o in observations if o.accepted}
    say(f"{scenario.name}: checking the ledger for {len(accepted)} accepted requests")
    ledger = check(redis_url, prefix, since_ms, accepted, timeout_s=ledger_timeout_s)
    say(f"{scenario.name}: {counts}; recovery {recovery} s; ledger delta {ledger.delta} "
        f"(missing {len(ledger.missing)}, duplicates {len(ledger.duplicates)}, "
        f"extra {len(ledger.extra)})")
    return ScenarioResult(scenario.name, scenario.fault, fault_at, spec.duration_s, steps,
                          counts, recovery, ledger, observations)
