"""Cross-replica KV reuse through the Serve stack: `small` runs as two replicas on two Ray
nodes (Ray's test cluster), LMCache in each engine, one real redis-server between them.

A long prompt answered by one replica is then answered by the other, which never saw it:
its prompt tokens come from Redis (cached_tokens), and its greedy answer equals the first
replica's, which computed everything.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration
URL = "/v1/chat/completions"


def _long_prompt() -> str:
    words = ["river", "mill", "weir", "bridge", "stone", "water", "boat", "harvest", "road"]
    tag = uuid.uuid4().hex[:8]  # unseen by both replicas and by Redis
    return f"[{tag}] " + " ".join(f"{words[i % len(words)]}{i % 7}" for i in range(300))


def test_a_prefix_computed_by_one_replica_is_loaded_by_the_other(http) -> None:
    body = {"model": "small", "messages": [{"role": "user", "content": _long_prompt()}],
            "max_tokens": 8, "temperature": 0}
    no_store = {"cache-control": "no-store"}  # the response cache would answer otherwise

    def ask():
        resp = http.post(URL, json=body, headers=no_store)
        assert resp.status_code == 200, resp.text
        return resp

    first = ask()
    origin = first.headers["x-sluice-replica"]
    assert first.json()["usage"]["prompt_tokens"] > 256
    other = None
    for _ in range(8):  # three at once: the prefix is in the tier, so once its replica has
        # more than one request over the other (the tier margin), the next goes to the other
        with ThreadPoolExecutor(3) as pool:
            pair = list(pool.map(lambda _: ask(), range(3)))
        other = next((r for r in pair if r.headers["x-sluice-replica"] != origin), None)
        if other is not None:
            break
    assert other is not None, "every request landed on the first replica"
    usage = other.json()["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    assert cached >= 0.8 * usage["prompt_tokens"], usage
    assert (other.json()["choices"][0]["message"]["content"]
            == first.json()["choices"][0]["message"]["content"])
