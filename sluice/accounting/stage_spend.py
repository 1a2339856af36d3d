"""Engine work a request paid for that is not its answer: a cascade's rejected small draft
and its LLM judge's grading call.

The cascade runner and the judge's grader record such calls here; the ingress opens one log
per request and adds its cost to the answer's. The log is a context variable, so it follows
the request through every task it spawns (a judge under `asyncio.wait_for` runs in a task
with a copy of the request's context, which holds the same list) without threading a
parameter through the judge interface. Background work the platform does for itself
(shadow calls measuring judge reliability) does not record here: no client asked for it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StageSpend:
    stage: str  # "draft" | "judge"
    model: str
    usage: dict[str, Any]


_LOG: ContextVar[list[StageSpend] | None] = ContextVar("sluice_stage_spend", default=None)


def open_log() -> list[StageSpend]:
    """Start the current request's log (in the task that handles the request)."""
    log: list[StageSpend] = []
    _LOG.set(log)
    return log


def record_stage(stage: str, model: str, response: Any) -> None:
    """Record an engine response's usage (a pydantic response or its dict), if a log is open."""
    log = _LOG.get()
    if log is None:
        return
    body = response if isinstance(response, dict) else response.model_dump(mode="json")
    usage = body.get("usage")
    if isinstance(usage, dict):
        log.append(StageSpend(stage, model, usage))
