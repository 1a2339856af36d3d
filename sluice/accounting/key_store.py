"""API keys created at runtime, kept in Redis, seen by every ingress replica.

One hash (`sluice:keys`, key id -> the key's JSON: tenant, SHA-256 of the secret, allowed
models, limits, budget; never the secret) and a version counter that every change bumps in
the same transaction. An ingress replica keeps a copy and, at most every `key_refresh_s`,
reads the version (one GET) and re-reads the hash only when it moved; requests wait for that
read, so a key created, rotated or revoked is in force on every replica within
`key_refresh_s` of the change. If Redis cannot be read, a replica keeps the copy it has (a
key revoked during the outage keeps working there until Redis answers again); a replica
that never read the store answers keys it does not know with 503 (retriable), not 401.

Keys from the profile (GitOps) are not in the store and cannot be changed through it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from sluice.accounting.tenancy import key_hash
from sluice.cache_tier.store_errors import STORE_ERRORS
from sluice.errors import Conflict, NotFound, Unavailable
from sluice.schema.accounting import StoredKey

log = logging.getLogger(__name__)
HASH = "sluice:keys"
VERSION = "sluice:keys:version"
SECRET_PREFIX = "sk-sluice-"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


class KeyStore:
    """The runtime keys (writes go straight to Redis; reads are this replica's copy)."""

    def __init__(self, client: Any, refresh_s: float = 2.0,
                 reserved: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._client, self._refresh_s, self._reserved = client, refresh_s, reserved
        self._clock, self._wall = clock, wall
        self._by_hash: dict[str, StoredKey] | None = None  # None: never read
        self._version: str | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Task[None] | None = None
        self.read_errors = 0

    # ---- reads (the request path) ------------------------------------------------------

    async def current(self) -> Mapping[str, StoredKey] | None:
        """The keys by the SHA-256 of their secret, at most `refresh_s` old; None when the
        store has never been read (Redis unreachable since this replica started)."""
        if self._clock() - self._read_at >= self._refresh_s:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.ensure_future(self._read())
            await asyncio.shield(self._reading)
        return self._by_hash

    def budgets(self) -> list[Any]:
        """The budgets of the stored keys, as this replica last read them."""
        return [b for k in (self._by_hash or {}).values() if (b := k.budget()) is not None]

    async def _read(self) -> None:
        try:
            version = await self._client.get(VERSION)
            if self._by_hash is None or version != self._version:
                raw = await self._client.hgetall(HASH)
                keys = [StoredKey.model_validate_json(v) for v in raw.values()]
                self._by_hash = {k.sha256: k for k in keys}
                self._version = version
        except (*STORE_ERRORS, TimeoutError) as exc:
            self.read_errors += 1
            if self.read_errors in (1, 10, 100) or self.read_errors % 1000 == 0:
                log.warning("key store unreachable (%r): using the keys read before", exc)
        finally:
            self._read_at = self._clock()

    # ---- writes (the CLI and the admin API) --------------------------------------------

    async def list(self) -> list[StoredKey]:
        raw = await self._guarded(self._client.hgetall(HASH))
        return sorted((StoredKey.model_validate_json(v) for v in raw.values()),
                      key=lambda k: k.id)

    async def create(self, fields: Mapping[str, Any]) -> tuple[str, StoredKey]:
        """A new key (its secret, returned once, and its entry); 409 if the id is taken."""
        secret = new_secret()
        key = StoredKey.model_validate({**fields, "sha256": key_hash(secret),
                                        "created": self._wall()})
        if key.id in self._reserved:
            raise Conflict(f"Key id '{key.id}' is a key of the profile; choose another id.",
                           param="id")
        created = await self._guarded(self._client.hsetnx(HASH, key.id,
                                                          key.model_dump_json()))
        if not created:
            raise Conflict(f"Key id '{key.id}' exists; rotate or revoke it.", param="id")
        await self._guarded(self._client.incr(VERSION))
        return secret, key

    async def rotate(self, key_id: str) -> tuple[str, StoredKey]:
        """A new secret for the key; the old one is refused from the next refresh on."""
        key = await self._get(key_id)
        secret = new_secret()
        rotated = key.model_copy(update={"sha256": key_hash(secret), "rotated": self._wall()})
        await self._write(key_id, rotated.model_dump_json())
        return secret, rotated

    async def revoke(self, key_id: str) -> StoredKey:
        key = await self._get(key_id)
        await self._write(key_id, None)
        return key

    async def _get(self, key_id: str) -> StoredKey:
        if key_id in self._reserved:
            raise Conflict(f"Key '{key_id}' is a key of the profile: change it there.",
                           param="key_id")
        raw = await self._guarded(self._client.hget(HASH, key_id))
        if raw is None:
            raise NotFound(f"No key '{key_id}' in the key store.", param="key_id",
                           code="key_not_found")
        return StoredKey.model_validate_json(raw)

    async def _write(self, key_id: str, value: str | None) -> None:
        """Change one key and bump the version in one transaction."""
        async def run() -> None:
            async with self._client.pipeline(transaction=True) as pipe:
                if value is None:
                    pipe.hdel(HASH, key_id)
                else:
                    pipe.hset(HASH, key_id, value)
                pipe.incr(VERSION)
                await pipe.execute()
        await self._guarded(run())

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    async def _guarded(call: Any) -> Any:
        try:
            return await call
        except (*STORE_ERRORS, TimeoutError) as exc:
            raise Unavailable(f"The key store is unreachable ({type(exc).__name__}); "
                              "retry shortly.", retry_after_s=1,
                              code="key_store_unavailable") from None
