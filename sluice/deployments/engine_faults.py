"""Faults an engine replica injects into its own requests (a profile's `faults`), as Envoy's
fault filter does at a proxy: a share of requests answered with an error, or each request's
first output delayed. For rehearsing a rollout's rollback and for chaos drills; the answer
a failed request gets is the one an engine bug would give (a 500 before any output).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

from sluice import sse

MESSAGE = "Injected fault (the profile's faults.error_fraction)."


def _error_item(streamed: bool) -> Any:
    if streamed:
        return [sse.encode({"error": {"message": MESSAGE, "type": "InjectedFault",
                                      "code": 500}})]
    from ray.serve.llm.openai_api_models import ErrorResponse

    # (pydantic builds its ErrorInfo, which ray.serve.llm does not export, from the dict)
    return ErrorResponse(error={"message": MESSAGE, "type": "InjectedFault",  # type: ignore[arg-type]
                                "code": 500})


async def _failed(streamed: bool) -> AsyncIterator[Any]:
    yield _error_item(streamed)


async def _delayed(stream: AsyncIterator[Any], delay_s: float) -> AsyncIterator[Any]:
    await asyncio.sleep(delay_s)
    async for item in stream:
        yield item


def faulted(stream: AsyncIterator[Any], faults: dict[str, float], streamed: bool,
            rng: random.Random) -> AsyncIterator[Any]:
    """The request's stream with this replica's faults applied (the engine's stream is
    closed unread when the request is failed)."""
    if rng.random() < float(faults.get("error_fraction", 0.0)):
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            asyncio.get_running_loop().create_task(aclose())
        return _failed(streamed)
    delay = float(faults.get("delay_s", 0.0))
    return _delayed(stream, delay) if delay > 0 else stream
