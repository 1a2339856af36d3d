"""Request shapes of realistic LLM traffic, as seeded draws (no Locust here, so they are unit
tested and reused by the capacity planner).

Prompt and output lengths are distributions, not constants: log-normal, clipped, as measured
traffic usually looks. Lengths are in words; the demo tokenizer makes roughly 1.3 tokens of
one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

WORDS = ("river mill weir bridge stone water boat harvest road lantern market tower field "
         "garden winter summer letter engine signal harbor meadow canal valley orchard").split()


@dataclass(frozen=True)
class LogNormal:
    """Log-normal with the given median, clipped to [low, high]."""

    median: float
    sigma: float
    low: int
    high: int

    def draw(self, rng: random.Random) -> int:
        value = rng.lognormvariate(math.log(self.median), self.sigma)
        return int(min(self.high, max(self.low, round(value))))


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@dataclass(frozen=True)
class Workload:
    """One kind of traffic: how long prompts and answers are."""

    name: str
    prompt_words: LogNormal
    output_tokens: LogNormal


SHORT_CHAT = Workload("short-chat", LogNormal(30, 0.6, 3, 200), LogNormal(48, 0.5, 4, 256))
RAG = Workload("rag", LogNormal(20, 0.4, 5, 60), LogNormal(64, 0.4, 8, 256))
MULTI_TURN = Workload("multi-turn", LogNormal(20, 0.5, 3, 120), LogNormal(40, 0.5, 4, 160))


def tenant_document(tenant: int, words: int = 600) -> str:
    """The long shared prefix of one tenant (the same text every time, per tenant)."""
    return f"Tenant {tenant} handbook. " + text(random.Random(10_000 + tenant), words)


def chat_request(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict:
    """A streamed chat request that reports usage and never hits the response cache."""
    return {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0.7, "stream": True, "stream_options": {"include_usage": True}}
