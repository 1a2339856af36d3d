"""The scenarios, one fault each, as timed steps against a steady load.

Every scenario runs the same load for its whole duration; its fault comes at `fault_at_s`
(after a stretch of healthy traffic) and, where the fault has an end (Redis paused or down,
the proxy's latency), it ends `outage_s` later, leaving the rest of the run to show the
recovery:

- `engine-kill`: SIGKILL the vLLM engine process of one of `small`'s two replicas.
- `engine-replica-kill`: SIGKILL one of `small`'s replica actors instead (not in the
  default set: the engine kill is the one a GPU fault looks like).
- `ingress-kill`: SIGKILL one of the two ingress replicas (its Serve actor process).
- `redis-restart`: SIGKILL redis-server, start it again `outage_s` later (same data).
- `redis-pause`: SIGSTOP redis-server for `outage_s`, then SIGCONT (connections stay
  open and nothing answers: what a stalled VM or a long fork looks like).
- `redis-proxy`: the fault proxy between the ingress and Redis adds `latency_s` to every
  chunk each way for half the outage, then resets every connection, twice, then passes
  traffic through again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loadtests.chaos.faults import Faults

Action = Callable[[Faults], dict[str, Any]]
DEFAULT = ("engine-kill", "ingress-kill", "redis-restart", "redis-pause", "redis-proxy")


@dataclass(frozen=True)
class Step:
    at_s: float  # since the scenario's start
    what: str
    act: Action


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: str  # one line, for the table's notes
    steps: tuple[Step, ...]
    kills_ingress: bool = False

    @property
    def fault_at_s(self) -> float:
        return self.steps[0].at_s


def build(name: str, fault_at_s: float, outage_s: float, latency_s: float) -> Scenario:
    f, r = fault_at_s, outage_s
    if name == "engine-kill":
        return Scenario(name, "SIGKILL one small engine process (of 2 replicas)",
                        (Step(f, "SIGKILL engine", Faults.kill_engine),))
    if name == "engine-replica-kill":
        return Scenario(name, "SIGKILL one small replica actor (of 2)",
                        (Step(f, "SIGKILL engine replica actor", Faults.kill_engine_replica),))
    if name == "ingress-kill":
        return Scenario(name, "SIGKILL one ingress replica (of 2)",
                        (Step(f, "SIGKILL ingress replica", Faults.kill_ingress),),
                        kills_ingress=True)
    if name == "redis-restart":
        return Scenario(name, f"SIGKILL redis-server, restarted {r:g} s later",
                        (Step(f, "SIGKILL redis-server", Faults.redis_kill),
                         Step(f + r, "start redis-server", Faults.redis_start)))
    if name == "redis-pause":
        return Scenario(name, f"SIGSTOP redis-server for {r:g} s",
                        (Step(f, "SIGSTOP redis-server", Faults.redis_pause),
                         Step(f + r, "SIGCONT redis-server", Faults.redis_resume)))
    if name == "redis-proxy":
        ms = latency_s * 1000

        def latency(faults: Faults) -> dict[str, Any]:
            return faults.proxy_latency(latency_s)

        return Scenario(name, f"proxy to Redis: +{ms:g} ms each way for {r / 2:g} s, then "
                        "every connection reset twice",
                        (Step(f, f"proxy latency +{ms:g} ms", latency),
                         Step(f + r / 2, "proxy resets every connection", Faults.proxy_reset),
                         Step(f + 3 * r / 4, "proxy resets every connection",
                              Faults.proxy_reset),
                         Step(f + r, "proxy passes through", Faults.proxy_pass)))
    raise ValueError(f"unknown scenario {name!r}; known: {', '.join(NAMES)}")


NAMES = ("engine-kill", "engine-replica-kill", "ingress-kill", "redis-restart",
         "redis-pause", "redis-proxy")
