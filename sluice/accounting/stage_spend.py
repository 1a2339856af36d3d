"""Engine work a request paid for that is not its answer: a cascade's rejected small draft
and its LLM judge's grading call.

Each request has one StageLog, opened by its settlement and handed down explicitly: the
pipeline passes it to the cascade runner, the runner to its judge. Settlement adds what the
log holds to the answer's cost, also when the request failed after those stages. Background
work the platform does for itself (shadow calls measuring judge reliability) gets no log:
no client asked for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class StageSpend:
    stage: str  # "draft" | "judge"
    model: str
    usage: dict[str, Any]


@dataclass
class StageLog:
    """The stages one request has spent on so far."""

    stages: list[StageSpend] = field(default_factory=list)

    def record(self, stage: str, model: str, response: dict[str, Any]) -> None:
        """Record an engine response's usage (its JSON-ready dict)."""
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.stages.append(StageSpend(stage, model, usage))
