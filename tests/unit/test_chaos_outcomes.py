"""Outcome kinds of the chaos harness (loadtests.chaos.outcomes) from hand-built observations."""

from __future__ import annotations

import pytest

from loadtests.chaos.load import LoadSpec, plan
from loadtests.chaos.outcomes import (
    HUNG,
    INGRESS_LOST,
    OK,
    OTHER,
    RETRIABLE,
    TRUNCATED,
    Observation,
    classify,
    classify_all,
    summarize,
)

INGRESS = {"x-sluice-ingress": "abc"}


def obs(**kw: object) -> Observation:
    base: dict = {"index": 0, "request_id": "r-0", "stream": False, "sent_s": 1.0,
                  "ended_s": 2.0, "body_complete": True}
    return Observation(**(base | kw))


@pytest.mark.parametrize("o, kind", [
    (obs(status=200, body_ok=True, headers=INGRESS), OK),
    (obs(status=200, body_ok=False, error="not an answer: "), OTHER),  # a 200 with no body
    (obs(stream=True, status=200, done=True), OK),
    (obs(stream=True, status=200, done=True, error_event=True), RETRIABLE),
    (obs(stream=True, status=200), TRUNCATED),  # ended cleanly, no [DONE], no error
    (obs(stream=True, status=200, error_event=True), OTHER),  # an error but no [DONE]
    (obs(status=503, headers={"retry-after": "1"}, error="service_unavailable: x",
         openai_error=True), RETRIABLE),
    (obs(status=429, headers={"retry-after": "3"}, error="rate_limit_exceeded: x",
         openai_error=True), RETRIABLE),
    (obs(status=503, error="service_unavailable: no retry-after", openai_error=True), OTHER),
    (obs(status=503, headers={"retry-after": "1"}, error="(not error JSON) Service "
         "Unavailable"), OTHER),  # Serve's proxy's own plain-text refusal
    (obs(status=500, error="internal_error: boom"), OTHER),
    (obs(status=400, error="bad"), OTHER),
    (obs(timed_out=True, body_complete=False), HUNG),
    (obs(stream=True, status=200, timed_out=True, body_complete=False, chunks=3), HUNG),
    (obs(transport_error="ConnectError", body_complete=False), OTHER),
    (obs(status=None, body_complete=False), OTHER),
])
def test_each_outcome_has_one_kind(o: Observation, kind: str) -> None:
    assert classify(o) == kind


def test_connection_errors_after_an_ingress_kill_are_ingress_lost() -> None:
    before = obs(transport_error="RemoteProtocolError", body_complete=False, ended_s=4.9)
    during = obs(transport_error="RemoteProtocolError", body_complete=False, sent_s=4.0,
                 ended_s=5.2)
    cut_stream = obs(stream=True, status=200, chunks=2, transport_error="ReadError",
                     body_complete=False, ended_s=6.0)
    assert classify(before, ingress_killed_s=5.0) == OTHER  # it failed before the kill
    assert classify(during, ingress_killed_s=5.0) == INGRESS_LOST
    assert classify(cut_stream, ingress_killed_s=5.0) == INGRESS_LOST
    assert classify(during) == OTHER  # no ingress killed: a plain connection error
    # a 500 is never excused by an ingress kill, nor a clean stream without [DONE]
    assert classify(obs(status=500, error="x"), ingress_killed_s=0.0) == OTHER
    assert classify(obs(stream=True, status=200), ingress_killed_s=0.0) == TRUNCATED


def test_retries_header_and_acceptance() -> None:
    retried = obs(status=200, body_ok=True, headers=INGRESS | {"x-sluice-retries": "1"})
    plain = obs(status=200, body_ok=True, headers=INGRESS | {"x-sluice-retries": "0"})
    absent = obs(status=200, body_ok=True, headers=INGRESS)
    assert (retried.retries, plain.retries, absent.retries) == (1, 0, 0)
    assert obs(headers=INGRESS | {"x-sluice-retries": "junk"}).retries == 0
    # accepted: a whole response Sluice rendered, whatever its status
    assert retried.accepted and obs(status=503, headers=INGRESS).accepted
    assert obs(status=500, error="internal_error: x", openai_error=True).accepted
    assert not obs(status=503, error="(not error JSON) x").accepted  # Serve's proxy
    # refused before admission: no ledger record by design
    assert not obs(status=401, headers=INGRESS, openai_error=True).accepted
    assert not obs(status=429, headers=INGRESS, error="budget_exceeded: spent",
                   openai_error=True).accepted
    assert not obs(status=200, headers=INGRESS, body_complete=False,
                   transport_error="ReadError").accepted
    assert not obs(status=200, headers=INGRESS, timed_out=True).accepted


def test_summary_counts_every_kind() -> None:
    observations = classify_all([
        obs(status=200, body_ok=True, headers=INGRESS | {"x-sluice-retries": "2"}),
        obs(status=200, body_ok=True, headers=INGRESS),
        obs(status=503, headers=INGRESS | {"retry-after": "1"}, error="x: y",
            openai_error=True),
        obs(timed_out=True, body_complete=False),
        obs(stream=True, status=200, headers=INGRESS),
    ])
    counts = summarize(observations)
    assert counts == {"sent": 5, "ok": 2, "retriable": 1, "other": 0, "ingress_lost": 0,
                      "hung": 1, "truncated": 1, "retried": 1, "accepted": 4}


def test_the_load_plan_is_fixed_by_its_seed() -> None:
    spec = LoadSpec(rate=4, duration_s=10, min_tokens=16, max_tokens=32)
    a, b = plan(spec, 7, "chaos-x"), plan(spec, 7, "chaos-x")
    assert a == b and len(a) == 40
    assert [r.at_s for r in a[:3]] == [0.0, 0.25, 0.5]  # open loop: fixed times
    assert len({r.request_id for r in a}) == 40
    assert len({r.body["messages"][0]["content"] for r in a}) == 40  # no cache hits
    assert all(16 <= r.body["max_tokens"] <= 32 for r in a)
    assert 5 < sum(r.stream for r in a) < 35
    assert plan(spec, 8, "chaos-x") != a
