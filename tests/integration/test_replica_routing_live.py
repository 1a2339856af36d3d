"""Replica routing through the real stack: `small` runs as two replicas (one per Ray node)
behind Sluice's prefix-affinity router, with the shared KV tier on.

- Requests that share a long prefix, sent one after another, land on one replica.
- A burst on one hot prefix is spread over both replicas instead of queueing on one.
- Requests with different prefixes use both replicas.
Every response names its replica in `x-sluice-replica`.
"""

from __future__ import annotations

import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

NO_STORE = {"cache-control": "no-store"}  # the response cache would answer repeats


def _document(tag: str) -> str:
    words = ["ledger", "harbour", "lantern", "orchard", "quarry", "meadow", "signal"]
    return f"[{tag}] " + " ".join(f"{words[i % len(words)]}{i % 5}" for i in range(160))


def _ask(http, document: str, question: str, max_tokens: int = 4) -> str:
    body = {"model": "small", "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "system", "content": document},
                         {"role": "user", "content": question}]}
    resp = http.post("/v1/chat/completions", json=body, headers=NO_STORE)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-sluice-replica"]


def test_requests_sharing_a_prefix_land_on_one_replica(http) -> None:
    document = _document(uuid.uuid4().hex[:8])
    replicas = [_ask(http, document, f"Question {i}: what is item {i}?") for i in range(6)]
    assert len(set(replicas)) == 1, replicas


def test_a_hot_prefix_spills_to_the_second_replica(http) -> None:
    document = _document(uuid.uuid4().hex[:8])
    _ask(http, document, "warm-up")
    with ThreadPoolExecutor(8) as pool:
        replicas = list(pool.map(lambda i: _ask(http, document, f"burst {i}", 24), range(8)))
    counts = Counter(replicas)
    assert len(counts) == 2, counts
    assert min(counts.values()) >= 2, counts  # spread, not one stray request


def test_different_prefixes_use_both_replicas(http) -> None:
    seen = {_ask(http, _document(uuid.uuid4().hex), "what is this?") for _ in range(8)}
    assert len(seen) == 2, seen
