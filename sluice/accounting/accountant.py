"""The ingress's accounting: who asks (keys, tenants, tags), whether their budget allows it,
and one ledger record per request with its cost attributed.

`admit` runs before any work (401 for a bad key, 400 for bad tags, 429 for a spent budget);
`settle` runs when the answer has ended (or failed) and never blocks: the ledger writes in
the background. `usage` answers `GET /v1/usage` for the caller's tenant only (an admin key
may name any tenant, or none for all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sluice.accounting.budgets import BudgetGuard, Verdict
from sluice.accounting.key_store import KeyStore
from sluice.accounting.ledger import LedgerRecord, LedgerWriter
from sluice.accounting.notifier import WebhookNotifier
from sluice.accounting.stage_spend import StageSpend
from sluice.accounting.tenancy import Authenticator, Forbidden, Principal
from sluice.accounting.usage_report import aggregate, group_by, window
from sluice.cache_tier.redis_target import async_client
from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.errors import NotFound, Unavailable
from sluice.observability.metrics import Metrics
from sluice.observability.outcome import Outcome, Tokens
from sluice.schema.accounting import AccountingConfig

log = logging.getLogger(__name__)
KEY_STORE_TIMEOUT_S = 0.5  # a key-store read on the request path (every key_refresh_s)
MAX_TAG_SERIES = 100  # distinct tags with their own metric series; the rest are "_other"
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Savings(Protocol):
    """What a compressed prompt saved (sluice.pipeline.compress_stage.Compressed)."""

    @property
    def note(self) -> str: ...

    @property
    def saved_tokens(self) -> int: ...

    @property
    def saved_usd(self) -> float: ...


@dataclass
class Admission:
    """A request let in: who it is for, when it came, what its budget said."""

    principal: Principal
    tags: tuple[str, ...]
    arrived: float
    verdict: Verdict


class Accountant:
    def __init__(self, config: AccountingConfig, redis_url: str | None, spawn: Spawn,
                 metrics: Metrics, clock: Callable[[], float] = time.time) -> None:
        self._auth = Authenticator(config.auth)
        self._clock, self._metrics = clock, metrics
        self._spawn = spawn
        self._ledger_config = config.ledger
        url = config.ledger.redis_url or redis_url
        client = (async_client(url, config.ledger.timeout_s)
                  if config.ledger.enabled and url else None)
        if config.ledger.enabled and client is None:
            log.warning("ledger enabled but no Redis configured: requests are not recorded")
        self.ledger = (LedgerWriter(client, config.ledger, on_written=self._written)
                       if client is not None else None)
        self.notifier = WebhookNotifier(config.webhook) if config.webhook else None
        self.keys = (KeyStore(async_client(url, KEY_STORE_TIMEOUT_S),
                              config.auth.key_refresh_s,
                              reserved=frozenset(k.id for k in config.auth.keys))
                     if config.auth.key_store and url else None)
        self.guard = BudgetGuard(config.budgets, read=self._read_spend, notify=self._alert,
                                 refresh_s=config.budget_refresh_s, clock=clock,
                                 reserve=self.ledger.reserve if self.ledger is not None else None,
                                 hold_timeout_s=config.budget_hold_timeout_s,
                                 key_budgets=self.keys.budgets if self.keys else None)
        self._tags: set[str] = set()
        metrics.registry.register(_AccountingCollector(self))

    async def _read_spend(self, keys: Any) -> Any:
        if self.ledger is None:  # no store: nothing spent that this replica did not see
            return [None] * len(keys)
        return await self.ledger.read_counters(list(keys))

    def _alert(self, event: dict[str, Any]) -> None:
        if self.notifier is not None:
            self._spawn(self.notifier.send(event))

    def _written(self, record: LedgerRecord, totals: dict[str, float] | None) -> None:
        self.guard.written(record, totals)

    async def principal(self, headers: Mapping[str, str]) -> Principal:
        """Who presents the request: a profile key or a key of the key store (401)."""
        if self.keys is None:
            return self._auth.principal(headers)
        stored = await self.keys.current()
        return self._auth.principal(headers, stored, store_read=stored is not None)

    async def admit(self, headers: Mapping[str, str], request_id: str) -> Admission:
        """Identify the caller and check their budget (raises 401, 400 or 429). A budget's
        refusal is a ledger record too, so a tenant sees its 429s in its usage."""
        principal = await self.principal(headers)
        tags = self._auth.tags(headers)
        verdict = await self.guard.check(principal)
        now = self._clock()
        admission = Admission(principal, tags, now, verdict)
        if verdict.level == "hard":
            error = verdict.error(now)
            self.settle(admission, request_id, "", error.status, None, 0.0, route="budget")
            raise error
        return admission

    def settle(self, admission: Admission, request_id: str, model: str, status: int,
               outcome: Outcome | None, cost_usd: float, route: str = "error",
               stages: Sequence[StageSpend] = (), hold_id: str = "", context: str = "",
               compression: Savings | None = None, variants: Sequence[str] = ()
               ) -> LedgerRecord:
        """Record the request (its outcome, or only its status when it failed); `stages`:
        the engine work it paid for besides its answer (a cascade's draft, judge);
        `variants`: the route and prompt-template versions it was given (a failed
        request's: an outcome names its own)."""
        tokens = Tokens.of(outcome.usage if outcome is not None else None)
        ran = [s.model for s in stages]
        if outcome is not None and outcome.model and outcome.cache != "hit":
            ran.append(outcome.model)
        record = LedgerRecord(
            request_id=request_id, ts=admission.arrived, key_id=admission.principal.key_id,
            tenant=admission.principal.tenant, tags=admission.tags, model=model,
            models=tuple(ran), route=outcome.route if outcome else route, status=status,
            cache=outcome.cache if outcome else "",
            prompt_tokens=tokens.prompt, cached_tokens=tokens.cached,
            completion_tokens=tokens.completion,
            latency_s=round(self._clock() - admission.arrived, 6),
            ttft_s=outcome.ttft_s if outcome else None, cost_usd=round(cost_usd, 9),
            estimated=bool(outcome and outcome.estimated), hold_id=hold_id, context=context,
            variants=tuple(outcome.served_variants if outcome is not None else variants),
            **({"compression": compression.note, "saved_tokens": compression.saved_tokens,
                "saved_usd": round(compression.saved_usd, 9)} if compression else {}))
        self.guard.spent(record)
        if self.ledger is not None:
            self.ledger.record(record)
        if cost_usd > 0:
            self._attribute(record)
        return record

    async def recorded(self) -> bool:
        """Wait (bounded: `ledger.sync_timeout_s`) until the records settled so far are in
        the store, where `ledger.sync` asks it; True when they are (or nothing waits)."""
        if self.ledger is None or not self._ledger_config.sync:
            return True
        return await self.ledger.written(self._ledger_config.sync_timeout_s)

    def _attribute(self, record: LedgerRecord) -> None:
        cost = self._metrics.attributed_cost
        cost.labels("key", record.key_id).inc(record.cost_usd)
        cost.labels("tenant", record.tenant).inc(record.cost_usd)
        for tag in record.tags:
            if tag not in self._tags and len(self._tags) < MAX_TAG_SERIES:
                self._tags.add(tag)
            cost.labels("tag", tag if tag in self._tags else "_other").inc(record.cost_usd)

    async def usage(self, headers: Mapping[str, str], params: Mapping[str, str]
                    ) -> dict[str, Any]:
        principal = await self.principal(headers)
        if self.ledger is None:
            raise NotFound("The ledger is not enabled on this platform (accounting.ledger).")
        start, end = window(params, self._clock())
        by = group_by(params)
        tenant = params.get("tenant")
        if not principal.admin:
            if tenant not in (None, principal.tenant):
                raise Forbidden(f"Key '{principal.key_id}' may read only tenant "
                                f"'{principal.tenant}''s usage.", param="tenant")
            tenant = principal.tenant
        await self.ledger.flush()  # this replica's own recent requests are included
        try:
            records = await self.ledger.read(start, end)
        except STORE_ERRORS as exc:  # the store is down: retriable
            raise Unavailable(f"The ledger store is unreachable ({type(exc).__name__}); "
                              "retry shortly.") from None
        if tenant is not None:
            records = [r for r in records if r.tenant == tenant]
        return {"object": "usage.report", "start": start, "end": end, "group_by": by,
                "tenant": tenant, **aggregate(records, by)}

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()
        if self.keys is not None:
            await self.keys.close()


class _AccountingCollector(Collector):
    """Budget, ledger and webhook state, read at scrape time."""

    def __init__(self, accountant: Accountant) -> None:
        self._a = accountant

    def collect(self) -> Iterator[Metric]:
        a = self._a
        limit = GaugeMetricFamily("sluice_budget_limit_usd", "Budget limits.",
                                  labels=["scope", "id", "period"])
        spent = GaugeMetricFamily("sluice_budget_spent_usd", "Spend against each budget in "
                                  "its current period (as this replica sees it).",
                                  labels=["scope", "id", "period"])
        soft = GaugeMetricFamily("sluice_budget_soft_limit_usd", "Spend at which each "
                                 "budget turns soft (limit x soft_fraction).",
                                 labels=["scope", "id", "period"])
        for scope, ident, period, lim, frac, usd in a.guard.snapshot():
            limit.add_metric([scope, ident, period], lim)
            soft.add_metric([scope, ident, period], lim * frac)
            spent.add_metric([scope, ident, period], usd)
        decisions = CounterMetricFamily("sluice_budget_decisions", "Requests refused (429) "
                                        "or downgraded by a budget.",
                                        labels=["result", "scope", "id"])
        for (result, scope, ident), n in sorted(a.guard.decisions.items()):
            decisions.add_metric([result, scope, ident], n)
        yield from (limit, soft, spent, decisions)
        ledger = a.ledger
        if ledger is not None:
            records = CounterMetricFamily("sluice_ledger_records", "Ledger records by "
                                          "result (written, duplicate, dropped).",
                                          labels=["result"])
            for result, key in (("written", "written"), ("duplicate", "duplicates"),
                                ("dropped", "dropped")):
                records.add_metric([result], ledger.counters[key])
            errors = CounterMetricFamily("sluice_ledger_write_errors", "Failed writes to "
                                         "the ledger store (records kept and retried).")
            errors.add_metric([], ledger.counters["write_errors"])
            buffered = GaugeMetricFamily("sluice_ledger_buffered", "Records waiting to be "
                                         "written.")
            buffered.add_metric([], len(ledger))
            yield from (records, errors, buffered)
        if a.notifier is not None:
            sent = CounterMetricFamily("sluice_alert_webhook", "Alert webhook posts by "
                                       "result.", labels=["result"])
            for result, n in a.notifier.counters.items():
                sent.add_metric([result], n)
            yield sent
