"""Replica selection for LLM deployments: prefix affinity balanced against load.

A prompt is cut into fixed-size character blocks, each hashed together with everything before
it (a chain, like vLLM's KV block hashes, but over the rendered text so the ingress needs no
tokenizer). The router remembers, per block hash, which replicas recently received it: the
longest run of remembered blocks says where the prompt's prefix is most likely still cached.

Load comes first, within a margin. Replicas whose requests in flight exceed the least loaded
one's by more than the imbalance threshold are not eligible; among the eligible, the longest
prefix match wins, then the shorter queue. A hot prefix therefore fills its replica up to the
margin and then spills to the next least-loaded one, which from then on holds it too.

With the shared KV tier on, a prefix another replica has computed is in Redis and any replica
can load it at a fraction of the cost of computing it, so the margin shrinks to
`tier_imbalance_threshold` (1 by default: the least-loaded replica wins unless the one
holding the prefix has at most one request more; not 0, because Serve's in-flight count of a
request that just finished can lag its answer by a moment, and a back-to-back request from the
same client would then be sent away from its prefix for nothing). Prompts with no remembered prefix go to the least-loaded replica, ties broken by
rendezvous hashing of their first block, so ingress replicas with separate memories still
agree on where a new prefix goes.

Pure logic: no Ray, no I/O. `sluice.deployments.replica_router` runs it inside Serve.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sluice.schema.serving import ReplicaRoutingConfig

_DIGEST = 8
_SEP_ROLE, _SEP_MSG = "\x1f", "\x1e"


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_content_text(part) for part in content)
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else _content_text(content.get("content"))
    return _content_text(getattr(content, "text", None) or getattr(content, "content", None))


def prompt_text(request: Any) -> str | None:
    """The text a request's prefix cache is keyed on: a completion's prompt, or a chat's
    messages with their roles (the chat template's output is a function of exactly these).
    None for anything else."""
    prompt = getattr(request, "prompt", None)
    if prompt is not None:
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return "".join(prompt)
        return str(prompt)  # token ids: their repr is a stable prefix too
    messages = getattr(request, "messages", None)
    if not isinstance(messages, list):
        return None
    parts = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", "")
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
        parts.append(f"{role}{_SEP_ROLE}{_content_text(content)}{_SEP_MSG}")
    return "".join(parts)


def block_hashes(text: str, block_chars: int) -> list[bytes]:
    """Chained hashes of the text's full blocks: the i-th names the first i+1 blocks."""
    out: list[bytes] = []
    prev = b""
    for start in range(0, len(text) - block_chars + 1, block_chars):
        prev = hashlib.blake2b(prev + text[start:start + block_chars].encode(),
                               digest_size=_DIGEST).digest()
        out.append(prev)
    return out


class AffinityTable:
    """Which replicas recently received each block hash; bounded, least recently used out."""

    def __init__(self, max_blocks: int, replicas_per_block: int) -> None:
        self._blocks: OrderedDict[bytes, list[str]] = OrderedDict()
        self._max_blocks = max_blocks
        self._per_block = replicas_per_block

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: Sequence[bytes]) -> dict[str, int]:
        """Per replica, how many leading blocks of the prompt it has received."""
        matched: dict[str, int] = {}
        for i, h in enumerate(hashes):
            holders = self._blocks.get(h)
            if not holders:
                break
            for r in holders:
                if matched.get(r, 0) == i:  # contiguous from the first block
                    matched[r] = i + 1
        return matched

    def record(self, hashes: Iterable[bytes], replica: str) -> None:
        for h in hashes:
            holders = self._blocks.pop(h, None) or []
            if replica in holders:
                holders.remove(replica)
            holders.append(replica)
            del holders[:-self._per_block]
            self._blocks[h] = holders
        while len(self._blocks) > self._max_blocks:
            self._blocks.popitem(last=False)


@dataclass(frozen=True)
class Ranking:
    order: tuple[str, ...]  # most preferred first
    reason: Literal["affinity", "spill", "least-loaded"]
    matched_blocks: int  # of the first choice


def _rendezvous(key: bytes, replica: str) -> bytes:
    return hashlib.blake2b(key + replica.encode(), digest_size=_DIGEST).digest()


def rank(queue_lens: Mapping[str, int], hashes: Sequence[bytes], matched: Mapping[str, int],
         config: ReplicaRoutingConfig, tier_enabled: bool) -> Ranking:
    """Order the replicas (their requests in flight given) for one prompt."""
    if not queue_lens:
        return Ranking((), "least-loaded", 0)
    key = hashes[0] if hashes else b""

    def by_load(r: str) -> tuple[int, bytes]:
        return queue_lens[r], _rendezvous(key, r)

    need = max(1, math.ceil(config.min_match_fraction * len(hashes)))
    best = max((matched.get(r, 0) for r in queue_lens), default=0)
    if not hashes or best < need:
        return Ranking(tuple(sorted(queue_lens, key=by_load)), "least-loaded", 0)
    margin = config.tier_imbalance_threshold if tier_enabled else config.imbalance_threshold
    lowest = min(queue_lens.values())
    eligible = [r for r in queue_lens if queue_lens[r] <= lowest + margin]
    rest = [r for r in queue_lens if queue_lens[r] > lowest + margin]
    eligible.sort(key=lambda r: (-matched.get(r, 0), *by_load(r)))
    rest.sort(key=by_load)
    first = eligible[0]
    got = matched.get(first, 0)
    reason: Literal["affinity", "spill"] = "affinity" if got >= best else "spill"
    return Ranking(tuple(eligible + rest), reason, got)
