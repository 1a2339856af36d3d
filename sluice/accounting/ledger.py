"""The request ledger: one record per request, in a Redis stream, written off the hot path.

`record()` only appends to an in-memory buffer; a background task writes batches with one
Lua script per record, which atomically (1) skips a record already written (its `entry_id`
is remembered for `dedupe_ttl_s`, so a batch retried after a lost reply is not counted
twice), (2) XADDs it to the stream and (3) adds its cost to the per-day and per-month spend
counters of its key and tenant, which budgets read (their new values come back, so a budget
check sees them without another read). Entries older than `retention_days` are trimmed as
new ones are added. While Redis is down the buffer holds
records (up to `buffer_max`) and the writer retries with backoff; records that would
overflow the buffer are dropped and counted (`dropped`), never silently.

`written()` lets an answer wait (bounded) for its record before its last bytes go out
(`ledger.sync`): it wakes the writer at once, and the requests that wait together share its
next batch (a group commit), so an ingress killed right after answering has lost no
record. While the store is down nobody waits: the buffer replays later.

Durability is Redis's: the local Redis runs with append-only persistence (`appendonly yes`);
point `ledger.redis_url` at a Redis without eviction (not an LRU cache) in production.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.schema.accounting import LedgerConfig

log = logging.getLogger(__name__)

# KEYS: stream, dedupe key, the 4 spend counters, then the budget holds to release.
# ARGV: cost, dedupe ttl, spend ttl, trim id, the record's hold id, the fields...
_APPEND = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[4], '*', unpack(ARGV, 6))
  local totals = {}
  for i = 3, 6 do
    totals[#totals + 1] = redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
    redis.call('EXPIRE', KEYS[i], tonumber(ARGV[3]))
  end
  for i = 7, #KEYS do redis.call('HDEL', KEYS[i], ARGV[5]) end
  return totals
end
return 0
"""
# KEYS: the spend counters of the budgets a request counts toward. ARGV: its worst-case
# cost, the hold's lifetime (ms), its id, then each counter's limit. Each counter's holds
# are a hash (hold id -> "usd:expires_ms"): expired ones are dropped as they are summed.
# Admitted while spent + held is under every limit; then it holds its worst case on each
# until the ledger writes its record (which deletes the hold, in _APPEND), or it lapses.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = {}
for i = 1, #KEYS do
  local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
  local hkey, held = KEYS[i] .. ':holds', 0
  local holds = redis.call('HGETALL', hkey)
  for j = 1, #holds, 2 do
    local usd, expires = string.match(holds[j + 1], '([^:]+):(%d+)')
    if tonumber(expires) < now then redis.call('HDEL', hkey, holds[j])
    else held = held + tonumber(usd) end
  end
  seen[#seen + 1] = tostring(spent)
  seen[#seen + 1] = tostring(held)
  if spent + held >= tonumber(ARGV[3 + i]) then
    return {0, i, unpack(seen)}
  end
end
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i] .. ':holds', ARGV[3], ARGV[1] .. ':' .. (now + ttl))
  redis.call('PEXPIRE', KEYS[i] .. ':holds', ttl + 60000)
end
return {1, 0, unpack(seen)}
"""
SPEND_TTL_S = 62 * 86400  # a month's counter outlives its month
HOLD_TTL_S = 900  # a hold whose record is never written (its replica died) lapses then


class LedgerRecord(BaseModel):
    """What one request did and cost. Strings and numbers only: it is a stream entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entry_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    request_id: str
    ts: float = Field(description="Unix time the request arrived.")
    key_id: str
    tenant: str
    tags: tuple[str, ...] = ()
    model: str = Field(description="The model the client asked for (`auto`, `small`, ...).")
    models: tuple[str, ...] = Field(default=(), description="Models that ran for it.")
    route: str = ""
    status: int
    cache: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    ttft_s: float | None = None
    cost_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    estimated: bool = Field(default=False, description="Tokens and cost are an estimate: "
                            "the answer ended before its usage (client gone, engine failed).")
    context: str = Field(default="", description="What an overflow of its model's context "
                         "became (x-sluice-context): routed, trimmed N messages, ...")
    variants: tuple[str, ...] = Field(
        default=(), description="The versions of a cascade route and of a prompt template "
        "it was given (`auto@v2`, `prompt:support@v2`; a model's variant is in `models`).")
    compression: str = Field(default="", description="Its prompt compressed "
                             "(x-sluice-compression): `1800->700 tokens`.")
    saved_tokens: int = Field(default=0, ge=0, description="Prompt tokens compression "
                              "removed.")
    saved_usd: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="Their "
                             "price at the model's input price.")
    hold_id: str = Field(default="", description="The budget hold its worst case was "
                         "held under; writing this record releases it.")

    def fields(self) -> dict[str, str]:
        out = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            out[name] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[Any, Any]) -> LedgerRecord:
        raw = {(k.decode() if isinstance(k, bytes) else k):
               (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
        for name in ("tags", "models", "variants"):
            raw[name] = tuple(x for x in raw.get(name, "").split(",") if x)
        return cls.model_validate(raw)


def spend_key(scope: str, ident: str, period: str, ts: float) -> str:
    """The Redis counter of a key's or tenant's spend in the UTC day or month of `ts`."""
    day = datetime.fromtimestamp(ts, UTC)
    stamp = day.strftime("%Y%m%d") if period == "daily" else day.strftime("%Y%m")
    return f"sluice:spend:{scope}:{ident}:{period}:{stamp}"


def spend_keys(record: LedgerRecord) -> list[str]:
    return [spend_key(scope, ident, period, record.ts)
            for scope, ident in (("key", record.key_id), ("tenant", record.tenant))
            for period in ("daily", "monthly")]


class LedgerWriter:
    """Buffers records and writes them in batches from one background task."""

    def __init__(self, client: Any, config: LedgerConfig,
                 on_written: Callable[[LedgerRecord, dict[str, float] | None], None]
                 | None = None) -> None:
        self._client = client
        self._config = config
        self._script = client.register_script(_APPEND)
        self._reserve = client.register_script(_RESERVE)
        self._buffer: deque[LedgerRecord] = deque()
        self._wake = asyncio.Event()
        self._on_written = on_written or (lambda record, totals: None)
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self._queued = 0  # records ever buffered
        self._done = 0  # of those, written (or found already written)
        self._progress = asyncio.Event()  # set (and replaced) after each write attempt
        self.counters = {"written": 0, "duplicates": 0, "dropped": 0, "write_errors": 0}
        self.healthy = True

    def __len__(self) -> int:
        return len(self._buffer)

    def record(self, record: LedgerRecord) -> bool:
        """Queue a record; False (and counted) when the buffer is full."""
        if len(self._buffer) >= self._config.buffer_max:
            self.counters["dropped"] += 1
            if self.counters["dropped"] == 1 or self.counters["dropped"] % 1000 == 0:
                log.error("ledger buffer full (%d): %d record(s) dropped",
                          self._config.buffer_max, self.counters["dropped"])
            return False
        self._buffer.append(record)
        self._queued += 1
        self._ensure_running()
        if len(self._buffer) >= self._config.batch:
            self._wake.set()
        return True

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        backoff = self._config.flush_interval_s
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                flushed = await self.flush()
            except Exception:  # a bug, not the store: keep the records, keep the task
                log.exception("ledger writer failed; %d record(s) kept", len(self._buffer))
                self.counters["write_errors"] += 1
                self.healthy, flushed = False, False
            if flushed:
                backoff = self._config.flush_interval_s
            else:
                backoff = min(self._config.retry_max_s, backoff * 2)

    async def written(self, timeout_s: float) -> bool:
        """Wait until every record buffered so far is in the store: True once it is; False
        at once while the store is down, or after `timeout_s` (the records stay buffered
        and are written in the background either way)."""
        target = self._queued
        if target - self._done > self._config.batch:
            return False  # a backlog (an outage's) is replaying: nobody waits behind it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._done < target:
            if not self.healthy:
                return False
            progress = self._progress
            self._ensure_running()
            self._wake.set()  # write now, not at the next interval
            try:
                await asyncio.wait_for(progress.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return self._done >= target
        return True

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def flush(self) -> bool:
        """Write everything buffered now; False if the store failed (records kept)."""
        async with self._flushing:
            try:
                return await self._flush()
            finally:
                self._progressed()  # whatever happened, waiters look again

    async def _flush(self) -> bool:
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(self._config.batch, len(self._buffer)))]
            try:
                written = await asyncio.wait_for(self._write(batch), self._config.timeout_s)
            except STORE_ERRORS as exc:  # the store failed: keep the records and retry
                self.counters["write_errors"] += 1
                if self.healthy:
                    log.warning("ledger store unreachable (%r); buffering %d record(s)",
                                exc, len(self._buffer))
                self.healthy = False
                return False
            for record, totals in zip(batch, written):
                self._buffer.popleft()
                self._done += 1
                self.counters["written" if totals is not None else "duplicates"] += 1
                try:
                    self._on_written(record, totals)
                except Exception:  # the record is written; a bug in its follower is logged
                    log.exception("ledger on_written failed for %s", record.request_id)
            self._progressed()
            if not self.healthy:
                log.warning("ledger store back; replayed the buffer")
            self.healthy = True
        return True

    async def _write(self, batch: list[LedgerRecord]) -> list[dict[str, float] | None]:
        """Per record: its spend counters' new totals, or None when it was already written."""
        min_id = f"{int((time.time() - self._config.retention_days * 86400) * 1000)}-0"
        async with self._client.pipeline(transaction=False) as pipe:  # reset even on failure
            for record in batch:
                args: list[Any] = [repr(record.cost_usd), self._config.dedupe_ttl_s,
                                   SPEND_TTL_S, min_id, record.hold_id]
                for name, value in record.fields().items():
                    args += [name, value]
                held = [f"{k}:holds" for k in spend_keys(record)] if record.hold_id else []
                keys = [self._config.stream, f"sluice:ledger:seen:{record.entry_id}",
                        *spend_keys(record), *held]
                await self._script(keys=keys, args=args, client=pipe)
            results = await pipe.execute()
        return [dict(zip(spend_keys(record), map(float, r))) if isinstance(r, list) else None
                for record, r in zip(batch, results)]

    async def reserve(self, keys: list[str], usd: float, limits: list[float], hold_id: str,
                      ttl_s: float = HOLD_TTL_S) -> tuple[bool, int, list[tuple[float, float]]]:
        """Hold `usd` on each spend counter under `hold_id`, atomically, if every one is
        under its limit counting what is held already: (admitted, the counter that refused
        (1-based, 0 if none), (spent, held) per counter read)."""
        result = await self._reserve(keys=keys, args=[repr(usd), int(ttl_s * 1000), hold_id,
                                                      *map(repr, limits)])
        values = [float(v) for v in result[2:]]
        return bool(result[0]), int(result[1]), list(zip(values[::2], values[1::2]))

    async def read_counters(self, keys: list[str]) -> list[Any]:
        """Spend counters, read between this writer's batches: a batch in flight is either
        wholly in the values or still pending, never both (budgets would count it twice)."""
        async with self._flushing:
            return list(await self._client.mget(keys))

    async def read(self, start: float, end: float, slack_s: float = 60.0
                   ) -> list[LedgerRecord]:
        """Records that arrived in [start, end). Entries are written after their request
        arrived, so the scan runs from `start` (less clock slack) to `end` plus the replay
        lag; a replayed record is found by its own time, not its write time. Entries are
        parsed off the event loop."""
        out: list[LedgerRecord] = []
        cursor = f"{max(0, int((start - slack_s) * 1000))}-0"
        last_id = f"{int((end + self._config.replay_lag_s) * 1000)}-0"
        while True:
            entries = await self._client.xrange(self._config.stream, min=cursor, max=last_id,
                                                count=2000)
            out += await asyncio.to_thread(_in_window, entries, start, end)
            if len(entries) < 2000:
                return out
            last = entries[-1][0]
            last = last.decode() if isinstance(last, bytes) else last
            cursor = "(" + last

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            await asyncio.wait_for(self.flush(), self._config.timeout_s)
        except STORE_ERRORS:  # best effort at shutdown
            log.warning("ledger: %d record(s) not written at shutdown", len(self._buffer))


def _in_window(entries: list[Any], start: float, end: float) -> list[LedgerRecord]:
    records = (LedgerRecord.from_fields(fields) for _, fields in entries)
    return [r for r in records if start <= r.ts < end]
