"""Does the ledger hold each accepted request exactly once?

The ledger is a Redis stream (`sluice.accounting.ledger`): one entry per request, with the
request's id, written off the hot path in batches (and replayed from a buffer after a
Redis outage). Every chaos request carries an `x-request-id` of the run's own prefix, so
the check reads the stream from the scenario's start and counts the entries of that prefix:
an accepted request with no entry is `missing`, one with two is a `duplicate`, an entry of
a request the client never saw answered (an ingress died after settling it, a client
timeout) is `extra`. The writer retries with backoff (up to `ledger.retry_max_s`), so the
check waits, bounded, for the stream to hold every accepted id before it counts.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from sluice.schema.accounting import STREAM


@dataclass(frozen=True)
class LedgerCheck:
    accepted: int
    records: int  # entries of the scenario's request ids
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    waited_s: float = 0.0

    @property
    def delta(self) -> int:
        """Records minus accepted requests: 0 when each accepted one is there once."""
        return self.records - self.accepted

    @property
    def exact(self) -> bool:
        return not self.missing and not self.duplicates

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"delta": self.delta, "exact": self.exact}


def compare(accepted: set[str], entries: Counter[str]) -> LedgerCheck:
    """Pure: the accepted ids against the ledger's entry count per id."""
    return LedgerCheck(
        accepted=len(accepted), records=sum(entries.values()),
        missing=sorted(accepted - set(entries)),
        duplicates=sorted(i for i, n in entries.items() if n > 1),
        extra=sorted(set(entries) - accepted))


def entries(client: redis.Redis, prefix: str, since_ms: int, stream: str = STREAM
            ) -> Counter[str]:
    """Entries per request id of the ids starting with `prefix`, from `since_ms` on."""
    out: Counter[str] = Counter()
    cursor = f"{since_ms}-0"
    while True:
        batch = client.xrange(stream, min=cursor, max="+", count=2000)
        for _, fields in batch:
            rid = fields.get(b"request_id", b"").decode()
            if rid.startswith(prefix):
                out[rid] += 1
        if len(batch) < 2000:
            return out
        cursor = "(" + batch[-1][0].decode()


def check(redis_url: str, prefix: str, since_ms: int, accepted: set[str],
          timeout_s: float = 30.0, stream: str = STREAM) -> LedgerCheck:
    """Wait (bounded) until every accepted id has an entry, then compare; a Redis that
    cannot be read within the bound counts every accepted id as missing."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    started = time.monotonic()
    seen: Counter[str] = Counter()
    try:
        while True:
            try:
                seen = entries(client, prefix, since_ms, stream)
            except redis.RedisError:
                pass
            if accepted <= set(seen) or time.monotonic() - started > timeout_s:
                break
            time.sleep(1.0)
        time.sleep(1.0)  # a straggling duplicate would land by now
        try:
            seen = entries(client, prefix, since_ms, stream)
        except redis.RedisError:
            pass
    finally:
        client.close()
    result = compare(accepted, seen)
    return LedgerCheck(**{**asdict(result), "waited_s": round(time.monotonic() - started, 1)})
