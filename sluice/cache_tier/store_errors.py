"""What a failing store raises: Redis' own errors, sockets, and our timeouts around calls.

Caught by name wherever a store may fail (caches, ledger, budgets), so a programming error
in that code is not mistaken for an outage and swallowed.
"""

from __future__ import annotations

from redis.exceptions import RedisError

STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
