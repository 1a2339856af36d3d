"""Budgets per API key or tenant, per UTC day and month: soft limit, hard limit.

Spend comes from the ledger's Redis counters (one per key/tenant and day/month, added to by
the same script that appends each record), so every ingress replica sees the whole fleet's
spend. Reading Redis on every request would put it on the hot path: the guard keeps each
counter's last value for `refresh_s`, raises it to the totals the ledger's own writes
return, and adds what this replica spent that is not written yet. Reads happen between the
ledger's batches, so a batch is never both in the value read and still pending. That
check (at admission, before the body) can trail other replicas by up to `refresh_s`.

Holds close that gap: once the body is parsed, `reserve` holds the request's worst-case
cost on every budget it counts toward, in one Redis script that admits it only while
spent + held is under each limit; the ledger's append script releases the hold in the same
step that adds the real cost. However many requests run at once, on however many replicas,
spend passes a limit by at most one request's hold. Each hold is an entry of its own with
an expiry (`HOLD_TTL_S`): one whose record is never written (its replica died) lapses. If
Redis does not answer within `budget_hold_timeout_s`, this replica's own view decides (its
estimate plus its own holds): an outage does not refuse every request, and the bound is then
per replica. Runtime keys (the key store's) bring their own budgets (`key_budgets`).

At `soft_fraction` of a limit the budget is `soft`: an alert (webhook and metric) and, with
`downgrade_auto`, cascade routes (`auto`) answer with their small model. At the limit it is
`hard`: 429 `insufficient_quota` until the period resets (Retry-After says when).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sluice.accounting.ledger import LedgerRecord, spend_key
from sluice.accounting.tenancy import Principal
from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.errors import BudgetExceeded
from sluice.schema.accounting import PERIODS, Budget

__all__ = ["BudgetExceeded"]  # the error a spent budget answers with

log = logging.getLogger(__name__)
Level = Literal["ok", "soft", "hard"]
_RANK = {"ok": 0, "soft": 1, "hard": 2}


def period_end(period: str, ts: float) -> float:
    day = datetime.fromtimestamp(ts, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return (day + timedelta(days=1)).timestamp()
    first = day.replace(day=1)
    return (first.replace(year=first.year + 1, month=1) if first.month == 12
            else first.replace(month=first.month + 1)).timestamp()


@dataclass(frozen=True)
class Verdict:
    level: Level
    budget: Budget | None = None
    period: str = ""
    spent_usd: float = 0.0
    limit_usd: float = 0.0
    resets_at: float = 0.0
    downgrade: bool = False  # soft, and a soft budget asks to downgrade `auto`

    def error(self, now: float) -> BudgetExceeded:
        assert self.budget is not None
        reset = datetime.fromtimestamp(self.resets_at, UTC).strftime("%Y-%m-%dT%H:%MZ")
        return BudgetExceeded(
            f"The {self.period} budget of {self.budget.scope} '{self.budget.id}' is spent "
            f"(${self.spent_usd:.4f} of ${self.limit_usd:.2f}); requests are refused until "
            f"{reset}.", headers={"Retry-After": str(max(1, int(self.resets_at - now)))})


SpendReader = Callable[[Sequence[str]], Awaitable[Sequence[Any]]]
# (counters, usd, limits, hold id) -> (admitted, refusing counter 1-based (0: none),
# (spent, held) per counter)
Reserver = Callable[[list[str], float, list[float], str],
                    Awaitable[tuple[bool, int, list[tuple[float, float]]]]]
Notify = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Hold:
    """A request's worst-case cost, held against its budgets until its record is written
    (the record carries the hold's id; writing it deletes the hold)."""

    id: str
    usd: float
    keys: tuple[str, ...]


class BudgetGuard:
    def __init__(self, budgets: Sequence[Budget], read: SpendReader,
                 notify: Notify | None = None, refresh_s: float = 1.0,
                 clock: Callable[[], float] = time.time, reserve: Reserver | None = None,
                 hold_timeout_s: float = 0.25,
                 key_budgets: Callable[[], Sequence[Budget]] | None = None) -> None:
        """key_budgets: the budgets of runtime keys (the key store's), read each time."""
        self._static = tuple(budgets)
        self._key_budgets = key_budgets
        self._read, self._refresh_s, self._clock = read, refresh_s, clock
        self._reserve, self._hold_timeout_s = reserve, hold_timeout_s
        self._holds: dict[str, Hold] = {}  # this replica's holds not yet recorded
        self._notify = notify or (lambda event: None)
        self._stored: dict[str, float] = {}  # counter -> last value read
        self._read_at: dict[str, float] = {}
        self._pending: dict[str, float] = {}  # counter -> spent here, not yet written
        self._announced: set[tuple[str, str]] = set()  # (counter, level)
        self.counters = {"rejected": 0, "downgraded": 0, "read_errors": 0}
        self.decisions: dict[tuple[str, str, str], int] = {}  # (result, scope, id) -> n

    @property
    def _budgets(self) -> Sequence[Budget]:
        return (self._static if self._key_budgets is None
                else (*self._static, *self._key_budgets()))

    def applicable(self, principal: Principal) -> list[Budget]:
        return [b for b in self._budgets
                if (b.scope, b.id) in (("key", principal.key_id), ("tenant", principal.tenant))]

    def _counters(self, record: LedgerRecord) -> list[str]:
        if record.cost_usd <= 0:
            return []
        return [spend_key(b.scope, b.id, period, record.ts) for b in self._budgets
                if b.id == (record.key_id if b.scope == "key" else record.tenant)
                for period in PERIODS]

    def spent(self, record: LedgerRecord) -> None:
        """A request's cost, as soon as it is known (before the ledger writes it)."""
        for key in self._counters(record):
            self._pending[key] = self._pending.get(key, 0.0) + record.cost_usd
        self._holds.pop(record.hold_id, None)  # its hold ends (in Redis: when written)

    def _held(self, key: str) -> float:
        return sum(h.usd for h in self._holds.values() if key in h.keys)

    async def reserve(self, principal: Principal, usd: float, arrived: float) -> Hold | None:
        """Hold a request's worst-case cost on every budget it counts toward, or refuse it
        (429) when what is spent plus what requests in flight hold reaches a limit: however
        many run at once, spend passes a limit by at most one request's hold. Atomic in
        Redis across replicas; if Redis cannot be reached, this replica's own view. The
        counters are those of the request's arrival (`arrived`), as its record's are."""
        now = self._clock()
        pairs = [(b, p, spend_key(b.scope, b.id, p, arrived))
                 for b in self.applicable(principal) for p in PERIODS if b.limit(p)]
        if not pairs or usd <= 0:
            return None
        keys = [k for _, _, k in pairs]
        limits = [b.limit(p) or 0.0 for b, p, _ in pairs]
        seen: list[tuple[float, float]] | None = None
        hold = Hold(uuid.uuid4().hex, usd, tuple(keys))
        if self._reserve is not None:
            try:
                admitted, refused, seen = await asyncio.wait_for(
                    self._reserve(keys, usd, limits, hold.id), timeout=self._hold_timeout_s)
            except STORE_ERRORS as exc:
                self.counters["read_errors"] += 1
                log.warning("budget reservation not written (%r); this replica's view", exc)
        if seen is None:  # no store: what this replica knows
            seen = [(self._estimate(k), self._held(k)) for k in keys]
            refused = next((i + 1 for i, (s, h) in enumerate(seen) if s + h >= limits[i]), 0)
            admitted = refused == 0
        if not admitted:
            budget, period, _ = pairs[refused - 1]
            spent, held = seen[refused - 1]
            verdict = Verdict("hard", budget, period, spent, limits[refused - 1],
                              period_end(period, now))
            self._count("rejected", verdict)
            if spent >= limits[refused - 1]:
                raise verdict.error(now)  # spent: refused until the period resets
            raise BudgetExceeded(
                f"The {period} budget of {budget.scope} '{budget.id}' is committed: "
                f"${spent:.4f} spent and ${held:.4f} held by requests in flight, of "
                f"${limits[refused - 1]:.2f}.", headers={"Retry-After": "2"})
        self._holds[hold.id] = hold
        return hold

    def written(self, record: LedgerRecord, totals: dict[str, float] | None) -> None:
        """The ledger wrote the record; `totals`: its counters' values just after (None: it
        had been written before). The counter now holds it, and is at least that total."""
        for key in self._counters(record):
            self._pending[key] = max(0.0, self._pending.get(key, 0.0) - record.cost_usd)
            if totals and key in totals:
                self._stored[key] = max(self._stored.get(key, 0.0), totals[key])

    def _estimate(self, key: str) -> float:
        return self._stored.get(key, 0.0) + self._pending.get(key, 0.0)

    async def check(self, principal: Principal) -> Verdict:
        now = self._clock()
        pairs = [(b, p, spend_key(b.scope, b.id, p, now))
                 for b in self.applicable(principal) for p in PERIODS if b.limit(p)]
        if not pairs:
            return Verdict("ok")
        await self._refresh([k for _, _, k in pairs], now)
        worst = Verdict("ok")
        verdicts: list[Verdict] = []
        for budget, period, key in pairs:
            limit = budget.limit(period) or 0.0
            spent = self._estimate(key)
            level: Level = ("hard" if spent >= limit else
                            "soft" if spent >= budget.soft_fraction * limit else "ok")
            verdict = Verdict(level, budget, period, spent, limit, period_end(period, now))
            verdicts.append(verdict)
            self._announce(key, verdict)
            if _RANK[level] > _RANK[worst.level]:
                worst = verdict
        if worst.level == "hard":
            self._count("rejected", worst)
        elif worst.level == "soft":  # any soft budget that asks for it downgrades
            worst = dataclasses.replace(worst, downgrade=any(
                v.level == "soft" and v.budget is not None and v.budget.downgrade_auto
                for v in verdicts))
        return worst

    def _count(self, result: str, verdict: Verdict) -> None:
        assert verdict.budget is not None
        self.counters[result] += 1
        which = (result, verdict.budget.scope, verdict.budget.id)
        self.decisions[which] = self.decisions.get(which, 0) + 1

    def downgraded(self, verdict: Verdict) -> None:
        """A cascade request was answered by its small model because of this verdict."""
        self._count("downgraded", verdict)

    async def refresh_all(self) -> None:
        """Re-read every budget's current counters (if stale): a scrape then shows the
        fleet's spend even for budgets this replica has not checked lately."""
        now = self._clock()
        await self._refresh([spend_key(b.scope, b.id, p, now) for b in self._budgets
                             for p in PERIODS if b.limit(p)], now)

    async def _refresh(self, keys: list[str], now: float) -> None:
        stale = [k for k in keys if now - self._read_at.get(k, -1e18) >= self._refresh_s]
        if not stale:
            return
        for k in stale:
            self._read_at[k] = now  # concurrent checks use the current values meanwhile
        try:
            values = await asyncio.wait_for(self._read(stale), timeout=0.25)
        except STORE_ERRORS as exc:  # keep the last values; never refuse for it
            self.counters["read_errors"] += 1
            log.warning("budget counters unreadable (%r); using the last values", exc)
            return  # retried after refresh_s, not on every request
        for key, value in zip(stale, values):
            self._stored[key] = float(value or 0.0)

    def _announce(self, key: str, verdict: Verdict) -> None:
        if verdict.level == "ok" or (key, verdict.level) in self._announced:
            return
        self._announced.add((key, verdict.level))
        assert verdict.budget is not None
        event = {"alert": f"budget_{verdict.level}", "scope": verdict.budget.scope,
                 "id": verdict.budget.id, "period": verdict.period,
                 "spent_usd": round(verdict.spent_usd, 6), "limit_usd": verdict.limit_usd,
                 "resets_at": verdict.resets_at}
        log.warning("budget %s:%s %s limit reached: %s", verdict.budget.scope,
                    verdict.budget.id, verdict.level, event)
        self._notify(event)

    def snapshot(self) -> list[tuple[str, str, str, float, float, float]]:
        """(scope, id, period, limit, soft_fraction, spent) of every budget now."""
        now = self._clock()
        out: list[tuple[str, str, str, float, float, float]] = []
        for b in self._budgets:
            for period in PERIODS:
                limit = b.limit(period)
                if limit:
                    key = spend_key(b.scope, b.id, period, now)
                    out.append((b.scope, b.id, period, limit, b.soft_fraction,
                                self._estimate(key)))
        return out
