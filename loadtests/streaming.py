"""Time one streamed OpenAI chat request: TTFT, inter-token gaps, tokens; no Locust here."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class StreamResult:
    ok: bool = False
    status: int = 0
    error: str = ""
    ttft_s: float | None = None
    total_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)  # between content chunks
    output_tokens: int = 0
    prompt_tokens: int = 0
    text: str = ""

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (the OpenAI-style TPOT)."""
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.total_s - self.ttft_s) / (self.output_tokens - 1)


def read_stream(lines: Iterable[str | bytes], started: float,
                clock=time.perf_counter) -> StreamResult:
    """Consume SSE lines of a chat completion stream, timing content as it arrives."""
    result = StreamResult(status=200)
    last: float | None = None
    parts: list[str] = []
    for raw in lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if not line.startswith("data: "):
            continue
        payload = line[len("data: "):].strip()
        if payload == "[DONE]":
            result.ok = not result.error
            break
        chunk = json.loads(payload)
        if "error" in chunk:
            result.error = str(chunk["error"].get("message", chunk["error"]))
            continue
        if chunk.get("usage"):
            result.output_tokens = chunk["usage"].get("completion_tokens", 0)
            result.prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                now = clock()
                if result.ttft_s is None:
                    result.ttft_s = now - started
                elif last is not None:
                    result.gaps_s.append(now - last)
                last = now
                parts.append(content)
    result.total_s = clock() - started
    result.text = "".join(parts)
    return result
