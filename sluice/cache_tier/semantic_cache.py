"""Semantic response cache: a question close enough in meaning to one already answered, asked
of the same model with everything else identical, gets the stored answer.

Opt-in, per model (`semantic_cache.models` in the profile) or per request
(`x-sluice-semantic-cache: allow`), and only for requests the exact cache may serve. The
last user message (or a completion's prompt) is compared by meaning: its MiniLM embedding
against earlier ones under the same *context*, a hash of the model, the endpoint, every other
message and every sampling parameter. A candidate above the similarity threshold is still
refused when the two texts differ in numbers, negation or named entities: the classic false
hits ("... 3 apples" vs "... 5 apples", "is X safe" vs "is X not safe").

The index is shared by every ingress replica through a Redis stream (XADD on store, XREAD of
what is new before a lookup; each replica mirrors it in memory); answers themselves are the
exact cache's entries, so they expire with its TTL and are checksummed the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sluice.cache_tier.response_cache import NOT_IN_KEY, ResponseCache
from sluice.schema.caches import SemanticCacheConfig

OPT_IN_HEADER = "x-sluice-semantic-cache"
SYNC_PAGE = 128  # stream entries per XREAD (each about 1.6 kB)


# ---- what is compared, and under which context ------------------------------------------

def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        parts = [p.get("text") for p in content if p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(t, str) for t in parts):
            return "\n".join(parts)  # type: ignore[arg-type]
    return None


def split_query(endpoint: str, model: str, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(text compared by meaning, context hash that must match exactly), or None when the
    request has no single trailing user text (tools, images, an assistant turn last)."""
    rest = {k: v for k, v in body.items() if k not in NOT_IN_KEY and v is not None}
    if endpoint == "chat":
        messages = rest.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return None
        last = messages[-1]
        text = _text(last.get("content")) if last.get("role") == "user" else None
        rest["messages"] = [*messages[:-1], {k: v for k, v in last.items() if k != "content"}]
    else:
        prompt = rest.pop("prompt", None)
        text = prompt if isinstance(prompt, str) else None
    if not text or not text.strip():
        return None
    canonical = json.dumps([endpoint, model, rest], sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return text, hashlib.sha256(canonical.encode()).hexdigest()


# ---- the guard --------------------------------------------------------------------------

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])}
_NEGATIONS = frozenset(
    ["not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without", "cannot"])
_TOKEN = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+(?:[.,]\d+)*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n)\s*[\"'(]*([A-Za-z][A-Za-z'\-]*)")


def _number(token: str) -> str:
    """'1,000' and '1000.0' are one number; '4.1.1' (a version) stays as written."""
    try:
        return repr(float(token.replace(",", "")))
    except ValueError:
        return token


def _numbers(tokens: list[str]) -> set[str]:
    found = set()
    for t in tokens:
        if t[0].isdigit():
            found.add(_number(t))
        elif t.lower() in _NUMBER_WORDS:
            found.add(repr(float(_NUMBER_WORDS[t.lower()])))
    return found


def _negated(tokens: list[str]) -> bool:
    return any(t.lower() in _NEGATIONS or t.lower().endswith("n't") for t in tokens)


def _entities(text: str, tokens: list[str]) -> set[str]:
    """Capitalised words that do not start a sentence (and are not 'I')."""
    starts = {m.start(1) for m in _SENTENCE_START.finditer(text)}
    found = set()
    for m in _TOKEN.finditer(text):
        word = m.group(0)
        if word[0].isupper() and m.start() not in starts and word != "I":
            found.add(word.lower())
    return found


def guard_conflict(a: str, b: str) -> str | None:
    """Why two similar texts must not share an answer ('numbers', 'negation', 'entities',
    'word-order'), or None. Entities count as shared when the other text has the word in
    any case. Word order: (nearly) the same words in another order ("flights from A to B" /
    "from B to A") is refused, since embeddings barely see order; a refusal only costs a
    miss."""
    ta, tb = _TOKEN.findall(a), _TOKEN.findall(b)
    if _numbers(ta) != _numbers(tb):
        return "numbers"
    if _negated(ta) != _negated(tb):
        return "negation"
    words_a, words_b = {t.lower() for t in ta}, {t.lower() for t in tb}
    if (_entities(a, ta) - words_b) or (_entities(b, tb) - words_a):
        return "entities"
    shared = words_a & words_b
    if len(words_a ^ words_b) <= 2 and ([t.lower() for t in ta if t.lower() in shared]
                                        != [t.lower() for t in tb if t.lower() in shared]):
        return "word-order"
    return None


# ---- the in-memory mirror of the shared index --------------------------------------------

@dataclass(frozen=True)
class Entry:
    context: str
    text: str
    key: str  # the exact cache's key of the stored answer
    vector: np.ndarray
    created: float


@dataclass(frozen=True)
class Match:
    entry: Entry
    similarity: float


@dataclass
class SemanticIndex:
    """Entries by context, oldest evicted first past `max_entries`."""

    max_entries: int
    _entries: OrderedDict[str, Entry] = field(default_factory=OrderedDict)
    _by_context: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry_id: str, entry: Entry) -> None:
        if entry_id in self._entries:
            return
        self._entries[entry_id] = entry
        self._by_context.setdefault(entry.context, []).append(entry_id)
        while len(self._entries) > self.max_entries:
            self.discard(next(iter(self._entries)))

    def discard(self, entry_id: str) -> None:
        entry = self._entries.pop(entry_id, None)
        if entry is not None:
            ids = self._by_context[entry.context]
            ids.remove(entry_id)
            if not ids:
                del self._by_context[entry.context]

    def search(self, context: str, text: str, vector: np.ndarray, threshold: float,
               guard: bool, not_before: float, refused: list[str] | None = None
               ) -> tuple[str, Match] | None:
        """The most similar entry above the threshold that the guard lets through; the
        guard's reasons for candidates it refused go to `refused`."""
        ids = [i for i in self._by_context.get(context, ())
               if self._entries[i].created >= not_before]
        if not ids:
            return None
        sims = np.stack([self._entries[i].vector for i in ids]) @ vector
        for j in np.argsort(-sims):
            if sims[j] < threshold:
                break
            entry = self._entries[ids[j]]
            conflict = guard_conflict(text, entry.text) if guard else None
            if conflict is not None:
                if refused is not None:
                    refused.append(conflict)
                continue
            return ids[j], Match(entry, float(sims[j]))
        return None


# ---- the cache ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """A semantic lookup's question, kept to remember the answer under it."""

    context: str
    text: str
    vector: np.ndarray


@dataclass(frozen=True)
class SemanticResult:
    probe: Probe | None  # None: the request is not eligible
    body: str | None = None
    similarity: float | None = None


def wants_semantic(config: SemanticCacheConfig, model: str, headers: Mapping[str, str]) -> bool:
    choice = headers.get(OPT_IN_HEADER, "").lower()
    if not config.enabled or choice in {"off", "no", "false"}:
        return False
    return choice == "allow" or model in config.models


class SemanticCache:
    """Shared semantic index over the exact cache's Redis (and its timeouts and breaker)."""

    def __init__(self, exact: ResponseCache, config: SemanticCacheConfig,
                 embed: Callable[[str], np.ndarray],
                 clock: Callable[[], float] = time.time) -> None:
        self._exact = exact
        self._config = config
        self._embed = embed
        self._clock = clock
        self._index = SemanticIndex(config.max_entries)
        self._last_id = "0-0"
        self.counters = {"hit": 0, "miss": 0, "guarded": 0, "ineligible": 0}

    @property
    def config(self) -> SemanticCacheConfig:
        return self._config

    def __len__(self) -> int:
        return len(self._index)

    async def lookup(self, endpoint: str, model: str, body: Mapping[str, Any],
                     read: bool) -> SemanticResult:
        split = split_query(endpoint, model, body)
        if split is None:
            self.counters["ineligible"] += 1
            return SemanticResult(None)
        text, context = split
        vector = await asyncio.to_thread(self._embed, text)
        probe = Probe(context, text, vector)
        if not read:
            return SemanticResult(probe)
        await self.sync()
        not_before = self._clock() - self._exact.config.ttl_s
        refused: list[str] = []
        found = self._index.search(context, text, vector, self._config.threshold,
                                   self._config.guard, not_before, refused)
        if found is None:
            if refused:
                self.counters["guarded"] += 1
            self.counters["miss"] += 1
            return SemanticResult(probe)
        entry_id, match = found
        answer = await self._exact.get(match.entry.key)
        if answer is None:
            if self._exact.healthy:  # expired or corrupt, not unreachable: forget it here too
                self._index.discard(entry_id)
            self.counters["miss"] += 1
            return SemanticResult(probe)
        self.counters["hit"] += 1
        return SemanticResult(probe, answer, match.similarity)

    async def remember(self, probe: Probe, key: str) -> None:
        """Publish an answer stored under `key` as the answer to `probe`'s question."""
        fields = {"c": probe.context, "t": probe.text, "k": key,
                  "v": np.asarray(probe.vector, dtype=np.float32).tobytes(),
                  "at": repr(self._clock())}
        await self._exact.call("xadd", self._config.log_key, fields,
                               maxlen=self._config.max_entries, approximate=True)

    async def sync(self, max_pages: int = 4) -> None:
        """Mirror what other replicas (and this one) added since the last sync, a page of
        SYNC_PAGE entries per Redis call: every call stays small enough for the cache's
        timeout, and a replica joining a full index catches up over a few lookups."""
        for _ in range(max_pages):
            reply = await self._exact.call("xread", {self._config.log_key: self._last_id},
                                           count=SYNC_PAGE)
            items = [item for _stream, page in reply or () for item in page]
            for entry_id, fields in items:
                entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                self._last_id = entry_id
                entry = _decode(fields)
                if entry is not None:
                    self._index.add(entry_id, entry)
            if len(items) < SYNC_PAGE:
                return


def _decode(fields: Mapping[bytes, bytes]) -> Entry | None:
    try:
        vector = np.frombuffer(fields[b"v"], dtype=np.float32)
        return Entry(fields[b"c"].decode(), fields[b"t"].decode(), fields[b"k"].decode(),
                     vector, float(fields[b"at"]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None
