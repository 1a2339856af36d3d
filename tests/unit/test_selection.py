"""Model selection by constraint (#21): the rule (sluice.router.selection), the measured
latency window, the request's bars and its key's models (sluice.pipeline.selector), the
quality file (sluice.router.quality) and the routing config's checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sluice.accounting.tenancy import Principal
from sluice.errors import Forbidden, InvalidRequest
from sluice.pipeline.request import RequestLimits, parsed
from sluice.pipeline.selector import AskedBars, Selector, asked_bars
from sluice.router import quality
from sluice.router.selection import Candidate, Constraints, ObservedLatency, select
from sluice.schema.artifact_hash import ArtifactError, sha256_file
from sluice.schema.routing import RoutingConfig, SelectionConfig

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "routing"


def _c(name: str, cost: float, p95: float | None = 100.0, q: float | None = 0.8) -> Candidate:
    return Candidate(name, cost, p95, q)


def test_the_cheapest_candidate_meeting_every_bar_answers_and_the_reason_says_why() -> None:
    small, mid, large = _c("small", 0.001, 80, 0.64), _c("mid", 0.01, 900, 0.8), \
        _c("large", 0.02, 300, 0.86)
    bars = Constraints("gsm8k", max_ttft_ms=500, min_quality=0.75)
    chosen = select([large, mid, small], bars)
    assert chosen.model == "large" and chosen.met
    assert "small: quality(gsm8k) 0.640 < 0.75" in chosen.reason
    assert "mid: ttft p95 900 ms > 500 ms" in chosen.reason
    assert chosen.reason.startswith("large ($0.020000, quality(gsm8k) 0.860, ttft p95 300 ms)")
    # no bars: the cheapest
    assert select([large, mid, small], Constraints("gsm8k")).model == "small"
    # a tie in price: the route's order
    assert select([_c("a", 1.0), _c("b", 1.0)], Constraints("t")).model == "a"


def test_unmeasured_latency_passes_a_latency_bar_and_unmeasured_quality_fails_a_quality_bar(
) -> None:
    new = _c("new", 0.001, p95=None, q=None)
    known = _c("known", 0.01, p95=200, q=0.9)
    assert select([new, known], Constraints("t", max_ttft_ms=50)).model == "new"
    picked = select([new, known], Constraints("t", min_quality=0.5))
    assert picked.model == "known" and "new: quality(t) unmeasured" in picked.reason


def test_when_no_candidate_meets_the_bars_the_best_effort_is_named_as_such() -> None:
    slow_good, fast_poor = _c("slow", 0.02, 2000, 0.9), _c("fast", 0.001, 100, 0.5)
    quality_unmet = select([slow_good, fast_poor], Constraints("t", min_quality=0.95))
    assert quality_unmet.model == "slow" and not quality_unmet.met
    assert "none meets quality(t) >= 0.95" in quality_unmet.reason
    both = select([slow_good, fast_poor], Constraints("t", max_ttft_ms=50, min_quality=0.95))
    assert both.model == "fast" and "the fastest" in both.reason


def test_the_latency_window_keeps_its_recent_samples_only() -> None:
    now = [0.0]
    window = ObservedLatency(window_s=60, clock=lambda: now[0], refresh_s=0)
    assert window.p95_ms("m") == (None, 0)
    for i in range(100):
        window.observe("m", 0.1 if i < 95 else 1.0)
    p95, n = window.p95_ms("m")
    assert n == 100 and 100 <= p95 <= 1000
    now[0] = 30
    window.observe("m", 0.2)
    assert window.p95_ms("m", window_s=10) == (pytest.approx(200.0), 1)
    now[0] = 61
    assert window.p95_ms("m")[1] == 1  # the first hundred aged out


def _selector(**config: object) -> Selector:
    selection = SelectionConfig(name="cheapest", candidates=("small", "large"), task="gsm8k",
                                min_samples=3, **config)
    prices = {"small": 1.0, "large": 20.0}
    return Selector([selection], {"cheapest": {"gsm8k": {"small": 0.64, "large": 0.86}}},
                    lambda model, prompt, completion: prices[model] * (prompt + completion),
                    ObservedLatency())


def _request(headers: dict[str, str] | None = None, model: str = "cheapest"):
    body = {"model": model, "messages": [{"role": "user", "content": "2+2?"}],
            "max_tokens": 8}
    return parsed("chat", body, RequestLimits(max_n=4, max_tokens=4096), "r1", headers or {}, body_bytes=80)


ANYONE = Principal("k", "t", False, (), None)


def test_the_selector_reads_the_requests_bars_and_sets_its_model() -> None:
    selector = _selector()
    request = _request()
    assert selector.choose(request, ANYONE).model == "small"
    assert request.llm.model == "small"
    strict = _request({"x-sluice-min-quality": "0.8"})
    assert selector.choose(strict, ANYONE).model == "large"
    other_task = _request({"x-sluice-task": "mtbench", "x-sluice-min-quality": "0.5"})
    chosen = selector.choose(other_task, ANYONE)
    assert not chosen.met and "unmeasured" in chosen.reason  # no quality for that task
    assert selector.choose(_request(model="small"), ANYONE) is None  # not a selection


def test_measured_latency_moves_the_choice() -> None:
    selector = _selector(max_ttft_ms=500)
    for _ in range(3):
        selector.observe("small", 2.0)  # small got slow: p95 2,000 ms
    chosen = selector.choose(_request(), ANYONE)
    assert chosen.model == "large" and "small: ttft p95 2000 ms > 500 ms" in chosen.reason


@pytest.mark.parametrize("name,value", [("x-sluice-min-quality", "1.5"),
                                        ("x-sluice-min-quality", "nan"),
                                        ("x-sluice-max-ttft-ms", "fast"),
                                        ("x-sluice-task", "Bad Task!")])
def test_bad_bars_are_400s_naming_the_header(name: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as bad:
        _selector().choose(_request({name: value}), ANYONE)
    assert bad.value.param == name


def test_bars_are_the_routes_when_clients_may_not_choose() -> None:
    selector = _selector(client_choice=False)
    assert selector.choose(_request({"x-sluice-min-quality": "0.8"}), ANYONE).model == "small"


def test_a_key_limited_to_some_models_chooses_among_those_only() -> None:
    only_large = Principal("k", "t", False, ("cheapest", "large"), None)
    assert _selector().choose(_request(), only_large).model == "large"
    with pytest.raises(Forbidden):
        _selector().choose(_request(), Principal("k", "t", False, ("cheapest",), None))


def test_a_selection_must_name_catalog_models_once_and_not_shadow_one() -> None:
    with pytest.raises(ValidationError):
        SelectionConfig(name="s", candidates=("small", "small"))
    with pytest.raises(ValidationError):
        SelectionConfig(name="s", candidates=("small",))
    config = RoutingConfig(selections=(SelectionConfig(name="s", candidates=("small", "x")),))
    with pytest.raises(ValueError, match="unknown model 'x'"):
        config.check_models({"small", "large"})
    with pytest.raises(ValueError, match="is a catalog model"):
        RoutingConfig(selections=(SelectionConfig(name="small", candidates=(
            "small", "large")),)).check_models({"small", "large"})


def test_the_quality_file_is_checked_against_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "quality.yaml"
    path.write_text(yaml.safe_dump({"tasks": {"gsm8k": {"small": 0.5, "large": 0.9}}}))
    assert quality.load(path, sha256_file(path)) == {"gsm8k": {"small": 0.5, "large": 0.9}}
    with pytest.raises(ArtifactError):
        quality.load(path, "0" * 64)
    path.write_text(yaml.safe_dump({"tasks": {"gsm8k": {"small": 2}}}))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        quality.load(path, sha256_file(path))


@pytest.mark.skipif(not DATA.is_dir(), reason="the labeled routing data is not beside the repo")
def test_the_shipped_quality_file_is_what_the_data_measures() -> None:
    shipped = yaml.safe_load((ROOT / "platform/routing/artifacts/quality.yaml").read_text())
    measured = quality.measure({"gsm8k": DATA / "gsm8k_pairs.jsonl",
                                "mtbench": DATA / "mtbench_pairs.jsonl"}, "small", "large")
    assert shipped["tasks"] == measured["tasks"]
    assert measured["tasks"]["gsm8k"]["small"] < measured["tasks"]["gsm8k"]["large"]
    routes = yaml.safe_load((ROOT / "platform/routing/routes.yaml").read_text())
    cheapest = next(s for s in routes["selections"] if s["name"] == "cheapest")
    assert cheapest["quality"]["sha256"] == sha256_file(
        ROOT / "platform/routing/artifacts/quality.yaml")


def test_the_p95_is_recomputed_at_most_once_per_refresh() -> None:
    now = [0.0]
    window = ObservedLatency(clock=lambda: now[0], refresh_s=1.0)
    window.observe("m", 0.1)
    assert window.p95_ms("m") == (pytest.approx(100.0), 1)
    window.observe("m", 0.9)
    assert window.p95_ms("m")[1] == 1  # within the refresh: the value computed before
    now[0] = 1.0
    assert window.p95_ms("m")[1] == 2


@pytest.mark.parametrize("name,value", [("x-sluice-max-ttft-ms", "1e3"),
                                        ("x-sluice-max-ttft-ms", "0"),
                                        ("x-sluice-max-ttft-ms", " 5"),
                                        ("x-sluice-min-quality", "-0"),
                                        ("x-sluice-task", "")])
def test_a_value_off_its_documented_pattern_is_refused_whatever_the_model(name: str,
                                                                          value: str) -> None:
    # the OpenAPI document states these patterns: what it calls invalid, the ingress refuses
    with pytest.raises(InvalidRequest) as bad:
        asked_bars({name: value})
    assert bad.value.param == name
    assert asked_bars({"x-sluice-max-ttft-ms": "250.5", "x-sluice-min-quality": "1.0",
                       "x-sluice-task": "gsm8k"}) == AskedBars("gsm8k", 250.5, 1.0)
