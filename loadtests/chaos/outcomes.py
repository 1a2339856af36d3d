"""What became of each request: one observation per request, one outcome kind each.

The kinds are the README's promise, read from the client's side:

- `ok`: a complete answer (a JSON answer with choices; a stream that ended with `[DONE]` and
  no error event). `retried` is not a kind of its own: an ok answer whose
  `x-sluice-retries` header is above 0 (Sluice called another engine replica for it).
- `retriable`: an OpenAI-shaped error the client is told to retry: 503 or 429 with
  `Retry-After`, or a stream that ended with an SSE error event followed by `[DONE]`.
- `ingress_lost`: a connection error of a request in flight at or after the moment an
  ingress replica was killed (the requests the dead replica held).
- `hung`: no outcome within the client's hard timeout.
- `truncated`: a stream whose body ended cleanly but without `[DONE]` and without an error
  event: it looks complete and is not.
- `other`: anything else (a 500, an unexpected 4xx, a 503 without `Retry-After`, a
  connection error with no ingress killed, a stream with an error event but no `[DONE]`).

Pure: observations are plain data the load generator fills in; tests build them by hand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

OK, RETRIABLE, OTHER, INGRESS_LOST, HUNG, TRUNCATED = (
    "ok", "retriable", "other", "ingress_lost", "hung", "truncated")
KINDS = (OK, RETRIABLE, OTHER, INGRESS_LOST, HUNG, TRUNCATED)
RETRIES_HEADER = "x-sluice-retries"
INGRESS_HEADER = "x-sluice-ingress"
# error codes of refusals before admission, which by design have no ledger record
PRE_ADMISSION = ("invalid_api_key", "budget_exceeded", "key_store_unavailable")
KEPT_HEADERS = ("retry-after", INGRESS_HEADER, RETRIES_HEADER, "x-sluice-replica",
                "content-type", "x-request-id")


@dataclass
class Observation:
    """What the client saw of one request. Times are seconds since the scenario began."""

    index: int
    request_id: str
    stream: bool
    sent_s: float
    ended_s: float = 0.0
    status: int | None = None  # None: no status line arrived
    headers: dict[str, str] = field(default_factory=dict)  # the KEPT_HEADERS present
    body_ok: bool = False  # a JSON answer with choices (non-streaming, 200)
    error: str = ""  # the error JSON's code and message, or what failed
    openai_error: bool = False  # the body was OpenAI's error JSON (Sluice rendered it)
    done: bool = False  # the stream carried `data: [DONE]`
    error_event: bool = False  # the stream carried an SSE error event
    body_complete: bool = False  # the HTTP body ended cleanly (no transport error)
    transport_error: str = ""  # the exception's class when the connection failed
    timed_out: bool = False  # the client's hard timeout fired
    chunks: int = 0  # content events of a stream
    first_chunk_s: float = 0.0  # when a stream's first content event came (0: none did)
    kind: str = ""  # set by classify()

    @property
    def retries(self) -> int:
        try:
            return max(0, int(self.headers.get(RETRIES_HEADER) or 0))
        except ValueError:
            return 0

    @property
    def accepted(self) -> bool:
        """Sluice took the request and gave it an outcome: a whole response (status and a
        body that ended) that Sluice rendered (it names its ingress replica, or it is
        OpenAI's error JSON: Serve's proxy answers in plain text), other than a refusal
        before admission (no key, no budget). These must each be in the ledger once."""
        if self.status is None or not self.body_complete or self.timed_out:
            return False
        if INGRESS_HEADER not in self.headers and not self.openai_error:
            return False
        return not (self.status == 401 or self.error.split(":")[0] in PRE_ADMISSION)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"retries": self.retries, "accepted": self.accepted}


def _retriable_status(obs: Observation) -> bool:
    return (obs.status in (429, 503) and bool(obs.headers.get("retry-after"))
            and obs.openai_error)


def classify(obs: Observation, ingress_killed_s: float | None = None) -> str:
    """The outcome kind of one observation. `ingress_killed_s`: when an ingress replica was
    killed in this scenario (None: none was)."""
    if obs.timed_out:
        return HUNG
    if obs.transport_error:
        if ingress_killed_s is not None and obs.ended_s >= ingress_killed_s:
            return INGRESS_LOST
        return OTHER
    if obs.status is None:
        return OTHER
    if obs.status == 200 and obs.stream:
        if obs.done:
            return RETRIABLE if obs.error_event else OK
        return OTHER if obs.error_event else TRUNCATED
    if obs.status == 200:
        return OK if obs.body_ok else OTHER
    return RETRIABLE if _retriable_status(obs) else OTHER


def classify_all(observations: list[Observation],
                 ingress_killed_s: float | None = None) -> list[Observation]:
    for obs in observations:
        obs.kind = classify(obs, ingress_killed_s)
    return observations


def summarize(observations: list[Observation]) -> dict[str, int]:
    """Counts per kind, plus `sent`, `retried` (ok answers that needed a retry) and
    `accepted`. Each observation must have been classified."""
    kinds = Counter(o.kind for o in observations)
    out = {"sent": len(observations), **{k: kinds.get(k, 0) for k in KINDS}}
    out["retried"] = sum(1 for o in observations if o.kind == OK and o.retries > 0)
    out["accepted"] = sum(1 for o in observations if o.accepted)
    return out


def examples(observations: list[Observation], kinds: tuple[str, ...] = (
        OTHER, HUNG, TRUNCATED, INGRESS_LOST, RETRIABLE), per_kind: int = 3
             ) -> dict[str, list[dict[str, Any]]]:
    """A few observations of each failing kind, as evidence for a report."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind in kinds:
        chosen = [o.as_dict() for o in observations if o.kind == kind][:per_kind]
        if chosen:
            out[kind] = chosen
    return out
