"""Semantic cache logic: what is compared, the guard, the index, and the shared log (with a
fake Redis; the real one and the real embedder are in the integration tests)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from sluice.cache_tier.response_cache import ResponseCache
from sluice.cache_tier.semantic_cache import (
    Entry,
    SemanticCache,
    SemanticIndex,
    guard_conflict,
    split_query,
    wants_semantic,
)
from sluice.schema.caches import ResponseCacheConfig, SemanticCacheConfig


class FakeRedis:
    """get/set/delete/ping and a stream (xadd/xread), shaped like redis-py's bytes replies."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.stream: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.fail = False

    async def _check(self) -> None:
        if self.fail:
            raise RedisConnectionError("down")

    async def get(self, key):
        await self._check()
        return self.data.get(key)

    async def set(self, key, value, ex):
        await self._check()
        self.data[key] = value
        return True

    async def delete(self, key):
        await self._check()
        self.data.pop(key, None)

    async def ping(self):
        await self._check()
        return True

    async def xadd(self, name, fields, maxlen=None, approximate=True):
        await self._check()
        entry_id = f"{len(self.stream) + 1}-0".encode()
        self.stream.append((entry_id, {k.encode(): v if isinstance(v, bytes) else v.encode()
                                       for k, v in fields.items()}))
        return entry_id

    async def xread(self, streams, count=None):
        await self._check()
        (name, last), = streams.items()
        seq = int(last.split("-")[0])
        items = [(i, f) for i, f in self.stream if int(i.split(b"-")[0]) > seq]
        return [[name.encode(), items[:count]]] if items else []


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


VECTORS = {
    "What is the capital of France?": _unit(1, 0, 0),
    "What's the capital city of France?": _unit(0.98, 0.2, 0),
    "What is the capital of Germany?": _unit(0.97, 0, 0.24),
    "How do I bake bread?": _unit(0, 1, 0),
}


def _caches(kv: FakeRedis, clock=lambda: 1000.0, **cfg):
    exact = ResponseCache(kv, ResponseCacheConfig(ttl_s=60))
    config = SemanticCacheConfig(enabled=True, threshold=0.9, **cfg)
    return exact, SemanticCache(exact, config, VECTORS.__getitem__, clock=clock)


def _chat(text: str, **extra) -> dict:
    return {"model": "small", "messages": [{"role": "user", "content": text}],
            "temperature": 0, **extra}


async def _ask(cache: SemanticCache, exact: ResponseCache, text: str, answer: str | None):
    """Look up; on a miss store `answer` the way the ingress does."""
    found = await cache.lookup("chat", "small", _chat(text), read=True)
    if found.body is None and answer is not None:
        key = f"rc:{text}"
        assert await exact.put(key, answer)
        await cache.remember(found.probe, key)
    return found


def test_guard_catches_numbers_negation_and_entities() -> None:
    assert guard_conflict("I have 3 apples, how many left?", "I have 5 apples, how many left?"
                          ) == "numbers"
    assert guard_conflict("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?"
                          ) == "negation"
    assert guard_conflict("Why can't I sleep?", "Why can I sleep?") == "negation"
    assert guard_conflict("What is the capital of France?", "What is the capital of Germany?"
                          ) == "entities"
    assert guard_conflict("I have ten dollars", "I have 10 dollars") is None
    assert guard_conflict("Things to do in Hong Kong?", "what to do in hong kong") is None
    assert guard_conflict("What is the capital of France?", "What's the capital city of France?"
                          ) is None
    assert guard_conflict("Costs 1,000 dollars.", "Costs 1000.0 dollars.") is None
    assert guard_conflict("Is Android 4.1.1 good?", "Is Android 4.1.2 good?") == "numbers"
    assert guard_conflict("Is Android 4.1.1 good?", "Is Android 4.1.1 good") is None
    assert guard_conflict("Cheap flights from Boston to Denver", "Cheap flights from Denver to "
                          "Boston") == "word-order"


def test_query_split_keeps_everything_but_the_last_user_text_in_the_context() -> None:
    text, ctx = split_query("chat", "small", _chat("hi"))  # type: ignore[misc]
    assert text == "hi"
    assert split_query("chat", "small", _chat("hello"))[1] == ctx  # type: ignore[index]
    assert split_query("chat", "large", _chat("hi"))[1] != ctx  # type: ignore[index]
    assert split_query("chat", "small", _chat("hi", max_tokens=5))[1] != ctx  # type: ignore[index]
    system = {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "hi"}], "temperature": 0}
    assert split_query("chat", "small", system)[1] != ctx  # type: ignore[index]
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert split_query("chat", "small", parts)[0] == "hi"  # type: ignore[index]
    assistant_last = {"messages": [{"role": "user", "content": "a"},
                                   {"role": "assistant", "content": "b"}]}
    assert split_query("chat", "small", assistant_last) is None
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}
    assert split_query("chat", "small", image) is None
    assert split_query("completions", "small", {"prompt": "hi"})[0] == "hi"  # type: ignore[index]
    assert split_query("completions", "small", {"prompt": [1, 2, 3]}) is None


def test_opt_in_per_model_or_per_request() -> None:
    config = SemanticCacheConfig(enabled=True, models=("auto",))
    assert wants_semantic(config, "auto", {})
    assert not wants_semantic(config, "small", {})
    assert wants_semantic(config, "small", {"x-sluice-semantic-cache": "allow"})
    assert not wants_semantic(config, "auto", {"x-sluice-semantic-cache": "off"})
    off = SemanticCacheConfig(enabled=False, models=("auto",))
    assert not wants_semantic(off, "auto", {"x-sluice-semantic-cache": "allow"})


def test_index_picks_the_best_guarded_match_and_evicts_the_oldest() -> None:
    index = SemanticIndex(max_entries=2)
    france, germany = VECTORS["What is the capital of France?"], VECTORS[
        "What is the capital of Germany?"]
    index.add("1", Entry("c", "What is the capital of Germany?", "k1", germany, 10.0))
    index.add("2", Entry("c", "What is the capital of France?", "k2", france, 10.0))
    query = VECTORS["What's the capital city of France?"]
    found = index.search("c", "What's the capital city of France?", query, 0.9, True, 0.0)
    assert found is not None and found[1].entry.key == "k2"
    # Germany is more similar to a France query than the threshold, but the guard refuses it
    only_germany = index.search("c", "What is the capital of France?", france, 0.9, True, 0.0)
    assert only_germany is not None and only_germany[1].entry.key == "k2"
    index.discard("2")
    assert index.search("c", "What is the capital of France?", france, 0.9, True, 0.0) is None
    assert index.search("c", "What is the capital of France?", france, 0.9, False, 0.0)
    assert index.search("other", "x", france, 0.0, False, 0.0) is None
    assert index.search("c", "x", germany, 0.0, False, not_before=11.0) is None  # too old
    index.add("3", Entry("c", "b", "k3", france, 10.0))
    index.add("4", Entry("c", "c", "k4", france, 10.0))
    assert len(index) == 2  # "1" evicted


def test_paraphrase_hits_across_replicas_through_the_shared_log() -> None:
    kv = FakeRedis()
    exact_a, replica_a = _caches(kv)
    exact_b, replica_b = _caches(kv)

    async def scenario():
        first = await _ask(replica_a, exact_a, "What is the capital of France?", "Paris")
        assert first.body is None and first.probe is not None
        hit = await _ask(replica_b, exact_b, "What's the capital city of France?", None)
        assert hit.body == "Paris" and hit.similarity == pytest.approx(0.98, abs=0.01)
        guarded = await _ask(replica_b, exact_b, "What is the capital of Germany?", None)
        assert guarded.body is None
        far = await _ask(replica_b, exact_b, "How do I bake bread?", None)
        assert far.body is None

    asyncio.run(scenario())
    assert replica_b.counters == {"hit": 1, "miss": 2, "guarded": 1, "ineligible": 0}


def test_expired_answer_is_a_miss_and_no_read_means_no_lookup() -> None:
    kv = FakeRedis()
    exact, cache = _caches(kv)

    async def scenario():
        await _ask(cache, exact, "What is the capital of France?", "Paris")
        kv.data.clear()  # the exact entry expired
        gone = await _ask(cache, exact, "What's the capital city of France?", None)
        assert gone.body is None
        await _ask(cache, exact, "What is the capital of France?", "Paris")
        no_read = await cache.lookup("chat", "small", _chat("What's the capital city of France?"),
                                     read=False)
        assert no_read.body is None and no_read.probe is not None

    asyncio.run(scenario())


def test_redis_outage_is_a_miss_not_an_error() -> None:
    kv = FakeRedis()
    exact, cache = _caches(kv)

    async def scenario():
        await _ask(cache, exact, "What is the capital of France?", "Paris")
        kv.fail = True
        down = await cache.lookup("chat", "small", _chat("What's the capital city of France?"),
                                  read=True)
        assert down.body is None
        await cache.remember(down.probe, "rc:x")  # swallowed by the breaker
        kv.fail = False
        await exact.probe()  # Redis is back: the entry was kept, not forgotten
        back = await cache.lookup("chat", "small", _chat("What's the capital city of France?"),
                                  read=True)
        assert back.body == "Paris"

    asyncio.run(scenario())
    assert exact.counters["error"] >= 1


def test_sync_reads_the_shared_log_in_pages() -> None:
    kv = FakeRedis()
    _, writer = _caches(kv)
    _, reader = _caches(kv)
    reads = []
    original = kv.xread

    async def counted(streams, count=None):
        reads.append(count)
        return await original(streams, count=count)

    kv.xread = counted

    async def scenario():
        probe = (await writer.lookup("chat", "small", _chat("How do I bake bread?"), False)).probe
        for i in range(300):
            await writer.remember(probe, f"rc:{i}")
        await reader.sync(max_pages=2)
        assert len(reader) == 256  # two pages this time
        await reader.sync()
        assert len(reader) == 300  # the rest next time

    asyncio.run(scenario())
    assert set(reads) == {128}
