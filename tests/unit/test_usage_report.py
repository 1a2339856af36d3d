"""`GET /v1/usage` aggregation: the window, the grouping, and the sums over ledger records."""

from datetime import UTC, datetime

import pytest

from sluice.accounting.ledger import LedgerRecord
from sluice.accounting.usage_report import GROUPS, MAX_WINDOW_S, aggregate, group_by, window
from sluice.errors import InvalidRequest

NOW = datetime(2024, 5, 15, 12, 0, tzinfo=UTC).timestamp()


def _rec(**kw) -> LedgerRecord:
    base = {"request_id": "r", "ts": NOW, "key_id": "alice", "tenant": "acme",
            "model": "auto", "models": ("small",), "route": "chat", "status": 200,
            "prompt_tokens": 10, "cached_tokens": 2, "completion_tokens": 5, "cost_usd": 0.001}
    return LedgerRecord(**(base | kw))


def test_window_defaults_to_the_last_24_hours() -> None:
    assert window({}, NOW) == (NOW - 86400, NOW)
    assert window({"start": "", "end": ""}, NOW) == (NOW - 86400, NOW)


def test_window_end_alone_sets_a_24_hour_window_ending_there() -> None:
    assert window({"end": str(NOW - 3600)}, NOW) == (NOW - 3600 - 86400, NOW - 3600)


def test_window_accepts_unix_seconds_including_fractions() -> None:
    assert window({"start": "1715731200", "end": "1715774400.5"}, NOW) == (
        1715731200.0, 1715774400.5)


def test_window_accepts_iso_8601_times_with_an_offset() -> None:
    start, end = window({"start": "2024-05-15T00:00:00+00:00", "end": "2024-05-15T12:00:00Z"},
                        NOW)
    assert start == datetime(2024, 5, 15, tzinfo=UTC).timestamp()
    assert end == NOW
    start, _ = window({"start": "2024-05-15T02:00:00+02:00"}, NOW)
    assert start == datetime(2024, 5, 15, tzinfo=UTC).timestamp()


@pytest.mark.parametrize("params, param", [
    ({"start": "yesterday"}, "start"),
    ({"end": "2024-13-01"}, "end"),
    ({"start": "2024-05-15T00:00:00+00:00", "end": "soon"}, "end"),
])
def test_window_rejects_unparsable_times_naming_the_parameter(params, param) -> None:
    with pytest.raises(InvalidRequest) as err:
        window(params, NOW)
    assert err.value.status == 400 and err.value.param == param
    assert "Unix seconds or an ISO 8601" in err.value.message


@pytest.mark.parametrize("start, end", [(NOW, NOW), (NOW + 1, NOW)])
def test_window_start_must_be_before_end(start: float, end: float) -> None:
    with pytest.raises(InvalidRequest, match="before") as err:
        window({"start": str(start), "end": str(end)}, NOW)
    assert err.value.status == 400 and err.value.param == "start"


def test_window_may_span_at_most_92_days() -> None:
    assert MAX_WINDOW_S == 92 * 86400
    assert window({"start": str(NOW - MAX_WINDOW_S)}, NOW) == (NOW - MAX_WINDOW_S, NOW)
    with pytest.raises(InvalidRequest, match="at most 92 days") as err:
        window({"start": str(NOW - MAX_WINDOW_S - 1)}, NOW)
    assert err.value.param == "start"


@pytest.mark.parametrize("params", [{"start": "nan"}, {"end": "nan"}, {"end": "inf"}])
def test_window_rejects_times_that_are_not_finite(params) -> None:
    with pytest.raises(InvalidRequest) as err:
        window(params, NOW)
    assert err.value.param == next(iter(params))


def test_an_iso_time_without_an_offset_is_utc() -> None:
    start, _ = window({"start": "2024-05-15T00:00:00", "end": "2024-05-16T00:00:00"}, NOW)
    assert start == 1715731200.0


def test_group_by_defaults_to_key_and_accepts_every_group() -> None:
    assert group_by({}) == "key"
    assert GROUPS == ("key", "tenant", "model", "served_model", "tag", "route", "variant")
    for g in GROUPS:
        assert group_by({"group_by": g}) == g


@pytest.mark.parametrize("value", ["", "user", "KEY", "tags"])
def test_group_by_rejects_unknown_groups(value: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        group_by({"group_by": value})
    assert err.value.status == 400 and err.value.param == "group_by"
    assert "served_model" in err.value.message


def test_aggregate_of_nothing_is_empty_with_zero_totals() -> None:
    assert aggregate([], "key") == {"data": [], "total": {
        "requests": 0, "errors": 0, "cache_hits": 0, "prompt_tokens": 0, "cached_tokens": 0,
        "completion_tokens": 0, "cost_usd": 0.0, "compressed_requests": 0, "saved_tokens": 0,
        "saved_usd": 0.0}}


def test_aggregate_by_key_sums_every_field_and_orders_by_cost() -> None:
    records = [_rec(key_id="alice", cost_usd=0.001, compression="1800->700 tokens",
                    saved_tokens=1100, saved_usd=0.00055),
               _rec(key_id="bob", cost_usd=0.5),
               _rec(key_id="alice", cost_usd=0.002, status=500, cache="hit",
                    prompt_tokens=1, cached_tokens=0, completion_tokens=0)]
    out = aggregate(records, "key")
    assert [row["group"] for row in out["data"]] == ["bob", "alice"]
    alice = out["data"][1]
    assert alice == {"group": "alice", "requests": 2, "errors": 1, "cache_hits": 1,
                     "prompt_tokens": 11, "cached_tokens": 2, "completion_tokens": 5,
                     "cost_usd": 0.003, "compressed_requests": 1, "saved_tokens": 1100,
                     "saved_usd": 0.00055}
    assert out["total"] == {"requests": 3, "errors": 1, "cache_hits": 1, "prompt_tokens": 21,
                            "cached_tokens": 4, "completion_tokens": 10, "cost_usd": 0.503,
                            "compressed_requests": 1, "saved_tokens": 1100,
                            "saved_usd": 0.00055}


def test_errors_count_status_400_and_above_only() -> None:
    records = [_rec(status=s) for s in (200, 399, 400, 429, 503)]
    assert aggregate(records, "key")["total"]["errors"] == 3


def test_cache_hits_count_only_the_hit_status() -> None:
    records = [_rec(cache=c) for c in ("hit", "miss", "", "bypass", "hit")]
    assert aggregate(records, "route")["total"]["cache_hits"] == 2


@pytest.mark.parametrize("by, field, groups", [
    ("tenant", "tenant", ["acme", "globex"]),
    ("model", "model", ["auto", "small"]),
    ("route", "route", ["chat", "completions"]),
])
def test_aggregate_groups_by_the_field(by: str, field: str, groups: list[str]) -> None:
    records = [_rec(**{field: groups[0]}, cost_usd=0.3), _rec(**{field: groups[1]}),
               _rec(**{field: groups[0]}, cost_usd=0.2)]
    data = aggregate(records, by)["data"]
    assert [(r["group"], r["requests"]) for r in data] == [(groups[0], 2), (groups[1], 1)]
    assert data[0]["cost_usd"] == 0.5


def test_served_model_is_the_last_model_that_ran() -> None:
    records = [_rec(model="auto", models=("small", "large"), cost_usd=0.01),
               _rec(model="auto", models=("small",)), _rec(model="small", models=())]
    data = aggregate(records, "served_model")["data"]
    assert {r["group"]: r["requests"] for r in data} == {"large": 1, "small": 1, "(none)": 1}
    assert aggregate(records, "model")["data"][0]["requests"] == 2  # `auto` as asked


def test_tags_count_once_under_each_and_untagged_has_its_own_group() -> None:
    records = [_rec(tags=("team-a", "feat-x"), cost_usd=0.1), _rec(tags=("team-a",)),
               _rec(tags=(), cost_usd=0.002)]
    out = aggregate(records, "tag")
    groups = {r["group"]: (r["requests"], r["cost_usd"]) for r in out["data"]}
    assert groups == {"team-a": (2, 0.101), "feat-x": (1, 0.1), "(untagged)": (1, 0.002)}
    assert out["total"]["requests"] == 3 and out["total"]["cost_usd"] == 0.103
    assert sum(r["requests"] for r in out["data"]) == 4  # tag groups exceed the total


def test_variants_group_a_routes_and_a_prompts_versions_once_under_each() -> None:
    records = [_rec(variants=("auto@v2", "prompt:support@v2"), cost_usd=0.1),
               _rec(variants=("auto",)), _rec(variants=())]
    groups = {r["group"]: r["requests"] for r in aggregate(records, "variant")["data"]}
    assert groups == {"auto@v2": 1, "prompt:support@v2": 1, "auto": 1, "(none)": 1}


def test_costs_are_rounded_to_nine_places() -> None:
    out = aggregate([_rec(cost_usd=0.1), _rec(cost_usd=0.2)], "key")
    assert out["total"]["cost_usd"] == 0.3 and out["data"][0]["cost_usd"] == 0.3
    tiny = aggregate([_rec(cost_usd=1.23456789e-7)], "key")
    assert tiny["total"]["cost_usd"] == 1.23e-7
