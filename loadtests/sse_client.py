"""A minimal streaming client that times one OpenAI-style request: TTFT, tokens, duration.

Used by the benchmarks against any OpenAI-compatible server (Sluice or bare vLLM), so both
are measured by the very same code.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class StreamTiming:
    ok: bool
    ttft_s: float
    total_s: float
    output_tokens: int
    status: int


async def timed_completion(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int
) -> StreamTiming:
    """Stream one /v1/completions request; TTFT is the first chunk carrying text.

    Sent with `Cache-Control: no-store`: these benchmarks measure the engine path, never
    Sluice's response cache (bare vLLM ignores the header)."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = float("nan")
    tokens = 0
    async with client.stream("POST", url, json=body,
                             headers={"cache-control": "no-store"}) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return StreamTiming(False, ttft, time.perf_counter() - start, 0, resp.status_code)
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0].get("text") and math.isnan(ttft):
                ttft = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return StreamTiming(not math.isnan(ttft), ttft, time.perf_counter() - start, tokens, 200)
