"""Managing the key store over HTTP (`/v1/admin/keys`), behind an admin key.

The same operations as `sluice keys create|list|rotate|revoke`: a caller without a known key
gets 401, a known key that is not an admin 403. Create and rotate return the secret once;
nothing else ever shows it (the store has only its hash).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pydantic

from sluice.accounting.key_store import KeyStore
from sluice.accounting.tenancy import Principal
from sluice.errors import Forbidden, InvalidRequest, NotFound, Unauthorized, invalid_value
from sluice.schema.accounting import ANONYMOUS, StoredKey

MAX_BODY_BYTES = 16_384
# what a caller may set; the hash and the times are the store's
SETTABLE = frozenset(StoredKey.model_fields) - {"sha256", "created", "rotated"}


def check_admin(principal: Principal) -> None:
    if principal.key_id == ANONYMOUS:
        raise Unauthorized("Managing keys needs an admin key: send `Authorization: Bearer "
                           "<admin key>`.")
    if not principal.admin:
        raise Forbidden(f"Key '{principal.key_id}' is not an admin key.",
                        code="admin_key_required")


def key_fields(raw: bytes) -> dict[str, Any]:
    """The new key's fields from a JSON body (400 names a bad or unknown one)."""
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"A key's description is at most {MAX_BODY_BYTES} bytes.")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    unknown = sorted(str(k) for k in body if k not in SETTABLE)
    if unknown:
        raise InvalidRequest(f"Unknown field '{unknown[0][:64]}' (allowed: "
                             f"{', '.join(sorted(SETTABLE))}).", param=unknown[0][:64])
    try:  # validated with a placeholder hash; the store sets the real one
        StoredKey.model_validate({**body, "sha256": "0" * 64})
    except pydantic.ValidationError as exc:
        raise invalid_value(exc.errors()) from None
    return body


class KeyAdmin:
    def __init__(self, store: KeyStore | None) -> None:
        self._store = store

    def _ready(self, principal: Principal) -> KeyStore:
        check_admin(principal)
        if self._store is None:
            raise NotFound("This platform has no key store (accounting.auth.key_store, and "
                           "a Redis for the ledger).", code="key_store_disabled")
        return self._store

    async def list(self, principal: Principal) -> dict[str, Any]:
        keys = await self._ready(principal).list()
        return {"object": "list", "data": [_card(k) for k in keys]}

    async def create(self, principal: Principal, raw: bytes) -> dict[str, Any]:
        store = self._ready(principal)
        secret, key = await store.create(key_fields(raw))
        return {**_card(key), "key": secret}

    async def rotate(self, principal: Principal, key_id: str) -> dict[str, Any]:
        secret, key = await self._ready(principal).rotate(key_id)
        return {**_card(key), "key": secret}

    async def revoke(self, principal: Principal, key_id: str) -> dict[str, Any]:
        key = await self._ready(principal).revoke(key_id)
        return {"id": key.id, "object": "api_key", "deleted": True}


def _card(key: StoredKey) -> Mapping[str, Any]:
    return {"object": "api_key", **key.public()}
