"""The request ledger against a real local redis-server: round trip, spend counters,
idempotent replays, an outage with the buffer replayed after restart, and paging."""

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest

from sluice.accounting.ledger import (
    LedgerConfig,
    LedgerRecord,
    LedgerWriter,
    spend_key,
    spend_keys,
)
from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.cache_tier.redis_target import async_client
from sluice.schema.accounting import STREAM

NOW = time.time()
FAST = {"timeout_s": 0.5, "flush_interval_s": 0.05, "retry_max_s": 0.2}


def _rec(i: int = 0, **kw) -> LedgerRecord:
    base = {"request_id": f"req-{i}", "ts": NOW, "key_id": "alice", "tenant": "acme",
            "model": "auto", "status": 200, "cost_usd": 0.001}
    return LedgerRecord(**(base | kw))


Body = Callable[[LedgerWriter, object, LocalRedisServer], Awaitable[object]]


def _run(server: LocalRedisServer, body: Body, on_written=None, client_timeout_s=0.5, **cfg):
    async def main():
        client = async_client(server.url, client_timeout_s)
        writer = LedgerWriter(client, LedgerConfig(**(FAST | cfg)), on_written)
        try:
            return await body(writer, client, server)
        finally:
            await writer.close()
            await client.aclose()
    return asyncio.run(main())


async def _float(client, key: str) -> float:
    value = await client.get(key)
    return float(value) if value is not None else 0.0


def test_flushed_records_read_back_with_equal_fields(redis_server) -> None:
    full = _rec(1, tags=("team-a", "feat:x"), models=("small", "large"), route="chat",
                cache="miss", prompt_tokens=12, cached_tokens=4, completion_tokens=7,
                latency_s=1.25, ttft_s=0.125, cost_usd=0.0123456789, ts=NOW - 1.5)
    bare = _rec(2, status=503, cost_usd=0.0)  # empty tuples, ttft None, empty strings
    seen: list[LedgerRecord] = []

    async def body(writer, client, _):
        assert writer.record(full) and writer.record(bare) and len(writer) == 2
        assert await writer.flush() is True
        assert len(writer) == 0 and writer.healthy
        return await writer.read(NOW - 60, NOW + 60)

    totals: list = []
    out = _run(redis_server, body,
               on_written=lambda record, new: (seen.append(record), totals.append(new)))
    assert out == [full, bare]
    assert out[1].tags == () and out[1].models == () and out[1].ttft_s is None
    assert seen == [full, bare]
    assert totals[0] == {k: full.cost_usd for k in spend_keys(full)}  # fresh counters


def test_spend_counters_hold_the_sum_of_costs_per_key_tenant_day_and_month(
        redis_server) -> None:
    day = datetime(2024, 5, 15, 9, tzinfo=UTC).timestamp()
    records = [_rec(1, ts=day, cost_usd=0.25), _rec(2, ts=day + 60, cost_usd=0.5),
               _rec(3, ts=day, key_id="bob", cost_usd=1.0),
               _rec(4, ts=day + 86400, cost_usd=2.0), _rec(5, ts=day, cost_usd=0.0)]

    async def body(writer, client, _):
        for r in records:
            writer.record(r)
        assert await writer.flush()
        keys = {(s, i, p, t): spend_key(s, i, p, t) for s, i in
                (("key", "alice"), ("key", "bob"), ("tenant", "acme"))
                for p in ("daily", "monthly") for t in (day, day + 86400)}
        assert await client.ttl(keys["key", "alice", "daily", day]) > 60 * 86400
        return {k: await _float(client, v) for k, v in keys.items()}

    spend = _run(redis_server, body)
    assert spend["key", "alice", "daily", day] == pytest.approx(0.75)
    assert spend["key", "alice", "daily", day + 86400] == pytest.approx(2.0)
    assert spend["key", "alice", "monthly", day] == pytest.approx(2.75)
    assert spend["key", "bob", "daily", day] == pytest.approx(1.0)
    assert spend["tenant", "acme", "daily", day] == pytest.approx(1.75)
    assert spend["tenant", "acme", "monthly", day] == pytest.approx(3.75)
    assert spend_keys(records[0]) == [
        "sluice:spend:key:alice:daily:20240515", "sluice:spend:key:alice:monthly:202405",
        "sluice:spend:tenant:acme:daily:20240515", "sluice:spend:tenant:acme:monthly:202405"]


def test_writing_the_same_entry_id_twice_is_a_no_op(redis_server) -> None:
    record = _rec(1, cost_usd=0.5)

    async def body(writer, client, _):
        writer.record(record)
        assert await writer.flush()
        writer.record(record)
        assert await writer.flush()
        return (await client.xlen(STREAM), await _float(client, spend_keys(record)[0]),
                writer.counters)

    length, spent, counters = _run(redis_server, body)
    assert length == 1 and spent == pytest.approx(0.5)
    assert counters["written"] == 1 and counters["duplicates"] == 1


def test_an_outage_buffers_records_and_a_restart_replays_them_exactly_once(
        redis_server) -> None:
    n = 7
    before = [_rec(i, cost_usd=0.01) for i in range(3)]
    during = [_rec(100 + i, cost_usd=0.02) for i in range(n)]

    async def body(writer, client, server):
        for r in before:
            writer.record(r)
        assert await writer.flush()
        server.stop()
        for r in during:
            assert writer.record(r)
        assert await writer.flush() is False
        assert len(writer) == n and not writer.healthy
        assert writer.counters["write_errors"] >= 1 and writer.counters["written"] == 3
        server.start()  # same port, same run_dir: the append-only file brings the data back
        assert await writer.flush() is True
        assert len(writer) == 0 and writer.healthy
        records = await writer.read(NOW - 60, NOW + 60)
        return records, await _float(client, spend_keys(before[0])[0]), writer.counters

    records, spent, counters = _run(redis_server, body)
    assert sorted(r.request_id for r in records) == sorted(
        r.request_id for r in before + during)
    assert len({r.entry_id for r in records}) == len(before) + n
    assert spent == pytest.approx(3 * 0.01 + n * 0.02)
    assert counters["written"] == len(before) + n and counters["dropped"] == 0


def test_a_full_buffer_drops_and_counts_new_records(redis_server) -> None:
    async def body(writer, client, server):
        server.stop()
        results = [writer.record(_rec(i)) for i in range(5)]
        assert await writer.flush() is False
        return results, len(writer), dict(writer.counters)

    results, buffered, counters = _run(redis_server, body, buffer_max=3)
    assert results == [True, True, True, False, False]
    assert buffered == 3 and counters["dropped"] == 2


def test_read_finds_a_record_by_its_own_time_not_its_write_time(redis_server) -> None:
    old = _rec(1, ts=NOW - 3 * 86400)

    async def body(writer, client, _):
        writer.record(old)
        writer.record(_rec(2))
        assert await writer.flush()
        return (await writer.read(old.ts - 10, old.ts + 10),
                await writer.read(NOW - 10, NOW + 10),
                await writer.read(old.ts, old.ts), await writer.read(NOW + 1, NOW + 10))

    around_old, around_now, empty, later = _run(redis_server, body, replay_lag_s=4 * 86400)
    assert around_old == [old]
    assert [r.request_id for r in around_now] == ["req-2"]
    assert empty == [] and later == []


def test_read_pages_through_more_than_2000_entries(redis_server) -> None:
    n = 2100

    async def body(writer, client, _):
        for i in range(n):
            writer.record(_rec(i, ts=NOW + i * 0.001))
        assert await writer.flush()
        assert writer.counters["written"] == n
        return (await writer.read(NOW - 1, NOW + 10),
                await writer.read(NOW + 2050 * 0.001 - 1e-6, NOW + 10))

    # one 2100-script round trip, or parsing 2000 entries, can take ~0.5 s on a busy machine
    everything, tail = _run(redis_server, body, client_timeout_s=5.0, batch=5000,
                            buffer_max=5000, timeout_s=5.0)
    assert [r.request_id for r in everything] == [f"req-{i}" for i in range(n)]
    assert [r.request_id for r in tail] == [f"req-{i}" for i in range(2050, n)]


def test_the_background_task_flushes_without_an_explicit_flush(redis_server) -> None:
    async def body(writer, client, _):
        writer.record(_rec(1))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and await client.xlen(STREAM) < 1:
            await asyncio.sleep(0.02)
        return await client.xlen(STREAM), len(writer), writer.counters["written"]

    assert _run(redis_server, body) == (1, 0, 1)


def test_the_background_task_replays_the_buffer_once_the_store_is_back(redis_server) -> None:
    async def body(writer, client, server):
        server.stop()
        for i in range(4):
            writer.record(_rec(i))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and writer.counters["write_errors"] < 1:
            await asyncio.sleep(0.02)
        assert writer.counters["write_errors"] >= 1 and len(writer) == 4
        server.start()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(writer):
            await asyncio.sleep(0.02)
        return await client.xlen(STREAM), len(writer), writer.healthy

    assert _run(redis_server, body) == (4, 0, True)


def test_written_waits_for_the_records_so_far_and_concurrent_waiters_share_a_write(
        redis_server) -> None:
    """An answer waits for its record (ledger.sync): the writer is woken at once, not at
    its interval, and twenty answers waiting together are written in a few round trips."""
    async def body(writer, client, _):
        started = time.monotonic()
        for i in range(20):
            writer.record(_rec(i))
        waited = await asyncio.gather(*(writer.written(2.0) for _ in range(20)))
        took = time.monotonic() - started
        return waited, await client.xlen(STREAM), len(writer), took

    waited, stored, left, took = _run(redis_server, body, flush_interval_s=30.0)
    assert waited == [True] * 20 and stored == 20 and left == 0
    assert took < 5.0  # the 30 s interval was not waited for


def test_written_does_not_wait_while_the_store_is_down_and_the_buffer_replays(
        redis_server) -> None:
    async def body(writer, client, server):
        server.stop()
        writer.record(_rec(1))
        first = await writer.written(2.0)  # finds the store down: False, after one try
        started = time.monotonic()
        writer.record(_rec(2))
        second = await writer.written(2.0)  # known down: no wait at all
        quick = time.monotonic() - started
        server.start()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(writer):
            await asyncio.sleep(0.02)
        return first, second, quick, await client.xlen(STREAM)

    first, second, quick, stored = _run(redis_server, body)
    assert (first, second) == (False, False) and quick < 0.1
    assert stored == 2  # kept, then written by the background task


def test_written_does_not_wait_behind_a_backlog(redis_server) -> None:
    """More than a batch waiting (an outage's replay): an answer is not held behind it."""
    async def body(writer, client, _):
        for i in range(10):
            writer.record(_rec(i))
        started = time.monotonic()
        waited = await writer.written(2.0)
        quick = time.monotonic() - started
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and len(writer):
            await asyncio.sleep(0.02)
        return waited, quick, await client.xlen(STREAM)

    waited, quick, stored = _run(redis_server, body, batch=4)
    assert waited is False and quick < 0.1 and stored == 10


def test_the_writer_survives_a_failing_follower_and_keeps_writing(redis_server) -> None:
    def follower(record, totals):
        raise RuntimeError("a bug after the write")

    async def body(writer, client, _):
        writer.record(_rec(1))
        first = await writer.written(2.0)
        writer.record(_rec(2))
        second = await writer.written(2.0)
        return first, second, await client.xlen(STREAM), writer.healthy

    assert _run(redis_server, body, on_written=follower) == (True, True, 2, True)


def test_written_gives_up_at_its_bound_on_a_store_that_does_not_answer(redis_server) -> None:
    async def body(writer, client, server):
        await client.ping()
        os.kill(server.pid, signal.SIGSTOP)  # connections hang rather than fail
        try:
            writer.record(_rec(1))
            started = time.monotonic()
            ok = await writer.written(0.3)
            return ok, time.monotonic() - started, len(writer)
        finally:
            os.kill(server.pid, signal.SIGCONT)

    ok, took, left = _run(redis_server, body, timeout_s=2.0)
    assert ok is False and 0.25 < took < 1.5 and left == 1


def test_a_cost_that_is_not_a_finite_amount_is_refused_at_the_record() -> None:
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError):
            LedgerRecord(request_id="r", ts=1.0, key_id="k", tenant="t", model="m",
                         status=200, cost_usd=bad)


def test_a_record_written_later_than_the_replay_lag_is_outside_its_window(redis_server) -> None:
    old = _rec(1, ts=NOW - 3 * 86400)

    async def body(writer, client, _):
        writer.record(old)
        assert await writer.flush()
        return await writer.read(old.ts - 10, old.ts + 10)

    assert _run(redis_server, body, replay_lag_s=86400) == []  # the scan stops a day later
