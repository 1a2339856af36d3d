"""Work the platform does after (or beside) a request: cache stores, shadow calls, alerts.

Each task runs in a context of its own, so it is part of neither the request's trace nor
its bill; the set keeps a reference until the task is done (asyncio holds only weak ones).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __len__(self) -> int:
        return len(self._tasks)
