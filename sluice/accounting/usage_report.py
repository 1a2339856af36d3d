"""`GET /v1/usage`: spend and tokens from the ledger, grouped, over a time window.

Pure aggregation over ledger records; the ingress reads them (LedgerWriter.read) and decides
which tenant a caller may see. `model` groups by the model the client asked for (`auto`,
`small`, ...); `served_model` by the one that answered; `variant` by the versions of a
cascade route and of a prompt template a request was given (`auto@v2`,
`prompt:support@v2`: a rollout's arms; a model's variant is its `served_model`). A request
with several tags (or variants) counts once under each, so those groups may add up to more
than the total.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sluice.accounting.ledger import LedgerRecord
from sluice.errors import InvalidRequest

GROUPS = ("key", "tenant", "model", "served_model", "tag", "route", "variant")
MAX_WINDOW_S = 92 * 86400
LATEST = 253402300800.0  # 10000-01-01: later times are not stream ids Redis can take


def _time(value: str, name: str) -> float:
    """Unix seconds, or ISO 8601 (UTC unless it names its offset)."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
            seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or not 0 <= seconds < LATEST:
        raise InvalidRequest(f"`{name}` must be Unix seconds or an ISO 8601 time, got "
                             f"{value[:40]!r}", param=name)
    return seconds


def window(params: Mapping[str, str], now: float) -> tuple[float, float]:
    """[start, end) from `start`/`end` query parameters; the last 24 hours by default."""
    end = _time(params["end"], "end") if params.get("end") else now
    start = _time(params["start"], "start") if params.get("start") else end - 86400
    if start >= end:
        raise InvalidRequest("`start` must be before `end`", param="start")
    if end - start > MAX_WINDOW_S:
        raise InvalidRequest(f"the window may span at most {MAX_WINDOW_S // 86400} days",
                             param="start")
    return start, end


def group_by(params: Mapping[str, str]) -> str:
    value = params.get("group_by", "key")
    if value not in GROUPS:
        raise InvalidRequest(f"`group_by` must be one of {', '.join(GROUPS)}",
                             param="group_by")
    return value


def _groups(record: LedgerRecord, by: str) -> Iterable[str]:
    if by == "tag":
        return record.tags or ("(untagged)",)
    if by == "variant":
        return record.variants or ("(none)",)
    if by == "served_model":
        return (record.models[-1] if record.models else "(none)",)
    return ({"key": record.key_id, "tenant": record.tenant, "model": record.model,
             "route": record.route}[by],)


def _empty() -> dict[str, Any]:
    return {"requests": 0, "errors": 0, "cache_hits": 0, "prompt_tokens": 0,
            "cached_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
            "compressed_requests": 0, "saved_tokens": 0, "saved_usd": 0.0}


def _add(row: dict[str, Any], r: LedgerRecord) -> None:
    row["requests"] += 1
    row["errors"] += r.status >= 400
    row["cache_hits"] += r.cache == "hit"
    row["prompt_tokens"] += r.prompt_tokens
    row["cached_tokens"] += r.cached_tokens
    row["completion_tokens"] += r.completion_tokens
    row["cost_usd"] += r.cost_usd
    row["compressed_requests"] += bool(r.compression)
    row["saved_tokens"] += r.saved_tokens
    row["saved_usd"] += r.saved_usd


def aggregate(records: Iterable[LedgerRecord], by: str) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    total = _empty()
    for r in records:
        _add(total, r)
        for group in _groups(r, by):
            _add(rows.setdefault(group, _empty()), r)
    def rounded(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "cost_usd": round(row["cost_usd"], 9),
                "saved_usd": round(row["saved_usd"], 9)}

    data = [{"group": g, **rounded(row)}
            for g, row in sorted(rows.items(), key=lambda kv: -kv[1]["cost_usd"])]
    return {"data": data, "total": rounded(total)}
