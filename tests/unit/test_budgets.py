"""Budget guard against a fake counter reader and a fake clock (the real counters: ledger)."""

import asyncio
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from sluice.accounting.budgets import Budget, BudgetExceeded, BudgetGuard, period_end
from sluice.accounting.ledger import LedgerConfig, LedgerRecord, spend_key
from sluice.accounting.tenancy import Principal
from sluice.schema.accounting import AccountingConfig

NOW = datetime(2024, 5, 15, 12, 0, tzinfo=UTC).timestamp()
ALICE = Principal("alice", "acme")


class Reader:
    """Redis MGET stand-in: counter name -> value; counts calls; can fail or stall."""

    def __init__(self, values: dict[str, float] | None = None) -> None:
        self.values = dict(values or {})
        self.calls: list[list[str]] = []
        self.fail = False
        self.delay_s = 0.0

    async def __call__(self, keys):
        self.calls.append(list(keys))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("redis down")
        return [self.values.get(k) for k in keys]


class Clock:
    def __init__(self, t: float = NOW) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _key(ident: str = "alice", period: str = "daily", scope: str = "key") -> str:
    return spend_key(scope, ident, period, NOW)


def _guard(*budgets: Budget, values=None, refresh_s: float = 1.0):
    reader, clock, events = Reader(values), Clock(), []
    budgets = budgets or (Budget(scope="key", id="alice", daily_usd=10.0),)
    return BudgetGuard(budgets, reader, events.append, refresh_s, clock), reader, clock, events


def _rec(cost: float, key_id: str = "alice", tenant: str = "acme", ts: float = NOW):
    return LedgerRecord(request_id="r", ts=ts, key_id=key_id, tenant=tenant, model="small",
                        status=200, cost_usd=cost)


def _check(guard: BudgetGuard, principal: Principal = ALICE):
    return asyncio.run(guard.check(principal))


def test_under_the_soft_limit_is_ok_without_downgrade() -> None:
    guard, reader, _, events = _guard(values={_key(): 7.99})
    v = _check(guard)
    assert (v.level, v.downgrade, v.budget) == ("ok", False, None)  # ok carries no detail
    assert guard.snapshot() == [("key", "alice", "daily", 10.0, 0.8, 7.99)]
    assert reader.calls == [[_key()]]  # a daily-only budget reads only the daily counter
    assert guard.counters == {"rejected": 0, "downgraded": 0, "read_errors": 0} and not events


@pytest.mark.parametrize("downgrade_auto", [True, False])
def test_at_the_soft_fraction_the_budget_is_soft(downgrade_auto: bool) -> None:
    budget = Budget(scope="key", id="alice", daily_usd=10.0, downgrade_auto=downgrade_auto)
    guard, *_ = _guard(budget, values={_key(): 8.0})
    v = _check(guard)
    assert v.level == "soft" and v.period == "daily" and v.budget == budget
    assert v.downgrade is downgrade_auto
    assert guard.counters["downgraded"] == 0  # counted where a request is downgraded
    guard.downgraded(v)
    assert guard.decisions == {("downgraded", "key", "alice"): 1}
    assert guard.counters["rejected"] == 0


def test_any_soft_budget_that_asks_for_it_downgrades() -> None:
    key = Budget(scope="key", id="alice", daily_usd=10.0, downgrade_auto=False)
    tenant = Budget(scope="tenant", id="acme", daily_usd=10.0)
    guard, *_ = _guard(key, tenant, values={_key(): 8.0, _key("acme", scope="tenant"): 8.0})
    v = _check(guard)
    assert v.level == "soft" and v.downgrade


def test_at_the_limit_the_budget_is_hard_with_a_429_until_the_utc_day_ends() -> None:
    guard, _, clock, _ = _guard(values={_key(): 10.0})
    v = _check(guard)
    assert v.level == "hard" and not v.downgrade and guard.counters["rejected"] == 1
    assert v.resets_at == datetime(2024, 5, 16, tzinfo=UTC).timestamp()
    err = v.error(clock())
    assert isinstance(err, BudgetExceeded)
    assert (err.status, err.type, err.code) == (429, "insufficient_quota", "budget_exceeded")
    assert err.headers["Retry-After"] == str(12 * 3600)
    assert "daily budget of key 'alice'" in err.message
    assert "$10.0000 of $10.00" in err.message and "2024-05-16T00:00Z" in err.message
    assert v.error(clock() + 3600).headers["Retry-After"] == str(11 * 3600)
    assert v.error(v.resets_at - 0.4).headers["Retry-After"] == "1"  # never 0


def test_a_monthly_limit_is_hard_until_the_utc_month_ends() -> None:
    budget = Budget(scope="tenant", id="acme", monthly_usd=100.0)
    guard, reader, clock, _ = _guard(budget, values={_key("acme", "monthly", "tenant"): 100.5})
    v = _check(guard)
    assert (v.level, v.period, v.limit_usd) == ("hard", "monthly", 100.0)
    assert reader.calls == [[_key("acme", "monthly", "tenant")]]
    reset = datetime(2024, 6, 1, tzinfo=UTC).timestamp()
    assert v.resets_at == reset
    err = v.error(clock())
    assert err.headers["Retry-After"] == str(int(reset - NOW))
    assert "monthly budget of tenant 'acme'" in err.message and "2024-06-01T00:00Z" in err.message


def test_the_worst_of_several_applicable_budgets_wins() -> None:
    budgets = (Budget(scope="key", id="alice", daily_usd=10.0, monthly_usd=50.0),
               Budget(scope="tenant", id="acme", daily_usd=100.0))
    values = {_key(): 1.0, _key(period="monthly"): 45.0, _key("acme", scope="tenant"): 100.0}
    guard, *_ = _guard(*budgets, values=values)
    v = _check(guard)
    assert (v.level, v.budget, v.period) == ("hard", budgets[1], "daily")


def test_pending_spend_counts_before_the_store_has_it() -> None:
    guard, *_ = _guard(values={_key(): 5.0})
    assert _check(guard).level == "ok"
    guard.spent(_rec(3.0))
    v = _check(guard)  # no refresh (same instant): the pending spend is added locally
    assert (v.level, v.spent_usd) == ("soft", 8.0)
    guard.spent(_rec(2.0))
    assert _check(guard).level == "hard"

def test_written_then_refresh_does_not_double_count() -> None:
    guard, reader, clock, _ = _guard(values={_key(): 5.0})
    _check(guard)
    rec = _rec(3.0)
    guard.spent(rec)
    guard.written(rec, {_key(): 8.0})  # the ledger wrote it; its script returned the total
    assert _check(guard).spent_usd == pytest.approx(8.0)
    guard.written(_rec(0.5), None)  # a replayed duplicate: pending falls, nothing is added
    assert _check(guard).spent_usd == pytest.approx(8.0)
    reader.values[_key()] = 8.0  # the store now includes it
    clock.t += 1.0
    v = _check(guard)
    assert len(reader.calls) == 2 and v.spent_usd == pytest.approx(8.0)



def test_a_write_returning_a_total_above_the_last_read_raises_the_estimate() -> None:
    guard, *_ = _guard(values={_key(): 5.0})
    _check(guard)
    rec = _rec(1.0)
    guard.spent(rec)
    guard.written(rec, {_key(): 9.0})  # other replicas spent 3.0 since the read
    assert _check(guard).spent_usd == pytest.approx(9.0)


def test_zero_cost_and_other_keys_spend_do_not_count() -> None:
    guard, *_ = _guard(values={_key(): 5.0})
    guard.spent(_rec(0.0))
    guard.spent(_rec(4.0, key_id="bob"))
    _check(guard)
    assert guard.snapshot()[0][-1] == 5.0


def test_counters_are_reread_only_every_refresh_s() -> None:
    guard, reader, clock, _ = _guard(values={_key(): 1.0}, refresh_s=1.0)
    for _ in range(3):
        _check(guard)
    assert len(reader.calls) == 1
    reader.values[_key()] = 9.0
    clock.t += 0.5
    assert _check(guard).level == "ok" and len(reader.calls) == 1
    clock.t += 0.5
    assert _check(guard).spent_usd == 9.0 and len(reader.calls) == 2


def test_a_reader_failure_keeps_the_last_values_and_is_counted() -> None:
    guard, reader, clock, _ = _guard(values={_key(): 9.0})
    assert _check(guard).level == "soft"
    reader.fail = True
    clock.t += 1.0
    v = _check(guard)  # does not raise
    assert (v.level, v.spent_usd) == ("soft", 9.0)
    assert guard.counters["read_errors"] == 1 and len(reader.calls) == 2
    _check(guard)  # not retried on every request
    assert len(reader.calls) == 2
    reader.fail, clock.t = False, clock.t + 1.0
    reader.values[_key()] = 10.0
    assert _check(guard).level == "hard" and guard.counters["read_errors"] == 1


@pytest.mark.parametrize("fault", ["fail", "stall"])
def test_a_failed_or_stalled_first_read_admits_the_request(fault: str) -> None:
    guard, reader, *_ = _guard(values={_key(): 50.0})
    reader.fail, reader.delay_s = fault == "fail", 2.0 if fault == "stall" else 0.0
    assert _check(guard).level == "ok" and guard.counters["read_errors"] == 1


def test_notify_fires_once_per_counter_and_level_crossing() -> None:
    guard, reader, clock, events = _guard(values={_key(): 8.5})
    for _ in range(3):
        assert _check(guard).level == "soft"
    assert events == [{"alert": "budget_soft", "scope": "key", "id": "alice",
                       "period": "daily", "spent_usd": 8.5, "limit_usd": 10.0,
                       "resets_at": datetime(2024, 5, 16, tzinfo=UTC).timestamp()}]
    reader.values[_key()] = 10.0
    for _ in range(3):
        clock.t += 1.0
        assert _check(guard).level == "hard"
    assert [e["alert"] for e in events] == ["budget_soft", "budget_hard"]


def test_a_key_budget_applies_only_to_that_key() -> None:
    guard, reader, *_ = _guard(values={_key(): 100.0})
    v = _check(guard, Principal("bob", "acme"))
    assert v.level == "ok" and v.budget is None and reader.calls == []
    assert guard.applicable(Principal("bob", "acme")) == []
    assert _check(guard).level == "hard"


def test_a_tenant_budget_applies_to_every_key_of_that_tenant_only() -> None:
    budget = Budget(scope="tenant", id="acme", daily_usd=10.0)
    guard, *_ = _guard(budget, values={_key("acme", scope="tenant"): 10.0})
    assert _check(guard, Principal("bob", "acme")).level == "hard"
    assert _check(guard, Principal("alice", "acme")).level == "hard"
    assert _check(guard, Principal("alice", "globex")).level == "ok"
    guard.spent(_rec(1.0, key_id="carol", tenant="globex"))
    assert guard.snapshot() == [("tenant", "acme", "daily", 10.0, 0.8, 10.0)]


def test_period_end_rolls_over_the_year_and_month() -> None:
    dec = datetime(2024, 12, 31, 23, 30, tzinfo=UTC).timestamp()
    jan1 = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    assert period_end("monthly", dec) == jan1 and period_end("daily", dec) == jan1
    mid_dec = datetime(2024, 12, 1, tzinfo=UTC).timestamp()
    assert period_end("monthly", mid_dec) == jan1
    leap = datetime(2024, 2, 29, 5, tzinfo=UTC).timestamp()
    assert period_end("daily", leap) == datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    assert period_end("monthly", leap) == datetime(2024, 3, 1, tzinfo=UTC).timestamp()


def test_snapshot_lists_every_limit_with_its_estimated_spend() -> None:
    budgets = (Budget(scope="key", id="alice", daily_usd=10.0, monthly_usd=200.0),
               Budget(scope="tenant", id="acme", monthly_usd=1000.0, soft_fraction=0.5))
    values = {_key(): 2.0, _key(period="monthly"): 20.0}
    guard, *_ = _guard(*budgets, values=values)
    _check(guard)
    guard.spent(_rec(1.5))
    assert guard.snapshot() == [("key", "alice", "daily", 10.0, 0.8, 3.5),
                                ("key", "alice", "monthly", 200.0, 0.8, 21.5),
                                ("tenant", "acme", "monthly", 1000.0, 0.5, 1.5)]


def test_budget_and_accounting_config_validation() -> None:
    with pytest.raises(ValidationError, match="needs daily_usd or monthly_usd"):
        Budget(scope="key", id="alice")
    for bad in ({"soft_fraction": 0}, {"soft_fraction": 1.1}, {"daily_usd": 0}):
        with pytest.raises(ValidationError):
            Budget.model_validate({"scope": "key", "id": "a", "daily_usd": 1.0} | bad)
    one = Budget(scope="key", id="alice", daily_usd=1.0)
    with pytest.raises(ValidationError, match="one budget per key or tenant"):
        AccountingConfig(budgets=(one, one.model_copy(update={"daily_usd": 2.0})))
    with pytest.raises(ValidationError, match="need the ledger"):
        AccountingConfig(budgets=(one,), ledger=LedgerConfig(enabled=False))
    assert AccountingConfig(budgets=(one, Budget(scope="tenant", id="alice", daily_usd=1.0)))


def test_concurrent_checks_share_one_read_of_the_counters() -> None:
    guard, reader, _, _ = _guard(values={_key(): 1.0})
    reader.delay_s = 0.01

    async def burst() -> None:
        await asyncio.gather(*(guard.check(ALICE) for _ in range(50)))

    asyncio.run(burst())
    assert len(reader.calls) == 1


def test_refresh_all_reads_every_budget_for_the_gauges() -> None:
    tenant = Budget(scope="tenant", id="acme", daily_usd=10.0, monthly_usd=100.0)
    guard, reader, _, _ = _guard(tenant, values={
        _key("acme", scope="tenant"): 4.0, _key("acme", "monthly", "tenant"): 40.0})
    asyncio.run(guard.refresh_all())
    assert sorted(row[-1] for row in guard.snapshot()) == [4.0, 40.0]
    asyncio.run(guard.refresh_all())  # within refresh_s: no second read
    assert len(reader.calls) == 1
