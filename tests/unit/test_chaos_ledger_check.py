"""The chaos harness's ledger check: accepted ids against a real Redis stream."""

from __future__ import annotations

import time
from collections import Counter

import redis

from loadtests.chaos.ledger_check import check, compare


def test_compare_names_missing_duplicate_and_extra_ids() -> None:
    result = compare({"a", "b", "c"}, Counter({"a": 1, "b": 2, "z": 1}))
    assert result.missing == ["c"] and result.duplicates == ["b"] and result.extra == ["z"]
    assert result.records == 4 and result.accepted == 3 and result.delta == 1
    assert not result.exact
    exact = compare({"a", "b"}, Counter({"a": 1, "b": 1}))
    assert exact.exact and exact.delta == 0


def test_check_reads_the_run_prefix_from_the_stream(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    since = int(time.time() * 1000) - 1000
    for rid in ("chaos-1-a-00000", "chaos-1-a-00001", "chaos-1-a-00001", "other-00000",
                "chaos-1-b-00000"):
        client.xadd("sluice:ledger", {"request_id": rid, "status": "200"})
    result = check(redis_url, "chaos-1-a-", since, {"chaos-1-a-00000", "chaos-1-a-00001"},
                   timeout_s=1)
    assert result.records == 3 and result.duplicates == ["chaos-1-a-00001"]
    assert not result.missing and not result.extra
    late = check(redis_url, "chaos-1-a-", since, {"chaos-1-a-00000", "chaos-1-a-00002"},
                 timeout_s=1)  # never written: the bounded wait gives up
    assert late.missing == ["chaos-1-a-00002"] and late.waited_s >= 1
    client.close()
