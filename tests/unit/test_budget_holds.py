"""Budget holds against a real redis-server: 50 requests at once against a budget, each
holding its worst case until its ledger record is written, overrun the budget by at most
one hold, and the ledger's counters equal the sum of what was charged; a spent budget
refuses until its period ends; a Redis outage falls back to the replica's own view."""

from __future__ import annotations

import asyncio
import random

import pytest

from sluice.accounting.accountant import Accountant
from sluice.accounting.ledger import spend_key
from sluice.accounting.tenancy import key_hash
from sluice.cache_tier.redis_target import async_client
from sluice.errors import BudgetExceeded
from sluice.observability.metrics import Metrics
from sluice.schema.accounting import AccountingConfig

BUDGET, WORST = 0.01, 0.0011  # each request may cost up to WORST, costs 0.0004-0.0011




def _accountant(url: str) -> Accountant:
    config = AccountingConfig.model_validate({
        "auth": {"keys": [{"id": "app", "tenant": "acme", "sha256": key_hash("sk-a")}]},
        "budgets": [{"scope": "tenant", "id": "acme", "daily_usd": BUDGET}],
        "ledger": {"flush_interval_s": 0.01, "timeout_s": 2}, "budget_refresh_s": 0.05,
        "budget_hold_timeout_s": 3.0})  # a busy machine: this test is about the counting
    return Accountant(config, url, lambda coro: asyncio.ensure_future(coro), Metrics())


HEADERS = {"authorization": "Bearer sk-a"}


def test_fifty_concurrent_requests_overrun_the_budget_by_at_most_one_hold(redis_url) -> None:
    rng = random.Random(7)

    async def scenario() -> tuple[int, float, float, float]:
        replicas = [_accountant(redis_url) for _ in range(2)]  # two ingress replicas
        charged = []

        async def one(i: int) -> None:
            accountant = replicas[i % 2]
            admission = await accountant.admit(HEADERS, f"r{i}")
            hold = await accountant.guard.reserve(admission.principal, WORST,
                                                  admission.arrived)
            await asyncio.sleep(rng.uniform(0.0, 0.05))  # the engine answers
            cost = round(rng.uniform(0.0004, WORST), 6)
            charged.append(cost)
            accountant.settle(admission, f"r{i}", "small", 200, None, cost,
                              hold_id=hold.id if hold else "")

        results = await asyncio.gather(*(one(i) for i in range(50)),
                                        return_exceptions=True)
        for accountant in replicas:  # every record written (a busy machine may need retries)
            for _ in range(50):
                if await accountant.ledger.flush() and not len(accountant.ledger):
                    break
                await asyncio.sleep(0.1)
            assert not len(accountant.ledger), accountant.ledger.counters
        refused = sum(isinstance(r, BudgetExceeded) for r in results)
        assert all(r is None or isinstance(r, BudgetExceeded) for r in results), results
        key = spend_key("tenant", "acme", "daily", replicas[0]._clock())
        (spent,) = await replicas[0].ledger.read_counters([key])
        client = async_client(redis_url, 2.0)
        held = await client.hlen(f"{key}:holds")
        await client.aclose()
        for accountant in replicas:
            await accountant.close()
        return refused, float(spent), held, sum(charged)

    refused, spent, held, charged = asyncio.run(scenario())
    assert refused > 0  # the budget did refuse the rest
    assert spent <= BUDGET + WORST + 1e-9  # at most one hold over
    assert abs(spent - charged) < 1e-9  # the ledger holds exactly what was charged
    assert held == 0  # every hold was released when its record was written


def test_a_spent_budget_refuses_until_its_period_ends(redis_url) -> None:
    async def scenario() -> BudgetExceeded:
        accountant = _accountant(redis_url)
        admission = await accountant.admit(HEADERS, "r1")
        hold = await accountant.guard.reserve(admission.principal, BUDGET * 2,
                                              admission.arrived)
        accountant.settle(admission, "r1", "small", 200, None, BUDGET * 1.5, hold_id=hold.id)
        await accountant.ledger.flush()
        with pytest.raises(BudgetExceeded) as info:
            await accountant.guard.reserve(admission.principal, 0.0001, admission.arrived)
        await accountant.close()
        return info.value

    err = asyncio.run(scenario())
    assert err.status == 429 and int(err.headers["Retry-After"]) > 2  # the day's end


def test_without_redis_the_replica_holds_alone() -> None:
    async def scenario() -> int:
        accountant = _accountant("redis://127.0.0.1:1")
        admission = await accountant.admit(HEADERS, "r")
        admitted = 0
        for _ in range(20):
            try:
                await accountant.guard.reserve(admission.principal, WORST, admission.arrived)
                admitted += 1
            except BudgetExceeded:
                pass
        return admitted

    # holds accumulate locally: admitted while held < budget, so ceil(0.01 / 0.0011) = 10
    assert asyncio.run(scenario()) == 10


def test_a_hold_whose_record_never_comes_lapses(redis_url) -> None:
    """A replica that died with requests in flight: their holds expire, one by one."""
    async def scenario() -> list[bool]:
        accountant = _accountant(redis_url)
        ledger = accountant.ledger
        out = []
        for hold in ("h1", "h2", "h3"):
            admitted, _, _ = await ledger.reserve(["c"], 0.006, [0.01], hold, ttl_s=0.3)
            out.append(admitted)
        await asyncio.sleep(0.4)
        out.append((await ledger.reserve(["c"], 0.006, [0.01], "h4", ttl_s=0.3))[0])
        await accountant.close()
        return out

    assert asyncio.run(scenario()) == [True, True, False, True]
