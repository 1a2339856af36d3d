"""Who is asking: API keys, the tenant each belongs to, and the request's tags.

Keys are configured by id with the SHA-256 of the secret, so the profile never holds a usable
key (`sluice keys new` mints one); keys created at runtime (`sluice keys create`) live in the
key store (`key_store`), looked up the same way. A key may be limited to some models. A
request presents `Authorization: Bearer <key>`, as every OpenAI client does.

With `auth.required: false` (the local profile) a request without a configured key is
served as the `anonymous` key of the `default` tenant: the OpenAI SDK always sends some key,
and refusing its placeholder would break `make serve`'s quick start. With `required: true`
a missing or unknown key is a 401, before any work is done.

Tags come from `x-sluice-tags: team-search,feature-summary` (comma-separated, each
`[A-Za-z0-9._:=-]`, at most `max_tags`); they are attributed cost, not authority.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sluice.errors import Forbidden, InvalidRequest, Unauthorized, Unavailable
from sluice.schema.accounting import ANONYMOUS, ApiKey, AuthConfig, RateLimit, StoredKey

__all__ = ["Forbidden", "Unauthorized"]  # the errors this module raises, for callers

TAGS_HEADER = "x-sluice-tags"
DEFAULT_TENANT = "default"
_TAG = re.compile(r"^[A-Za-z0-9._:=-]{1,64}$")


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The key a request is attributed to."""

    key_id: str
    tenant: str
    admin: bool = False
    models: tuple[str, ...] = ()  # empty: every model
    rate_limit: RateLimit | None = None  # a stored key's own limit

    def may_use(self, model: str) -> None:
        """403 if this key is limited to other models."""
        if self.models and model not in self.models:
            raise Forbidden(f"Key '{self.key_id}' may not use model '{model[:100]}' (it may "
                            f"use: {', '.join(self.models)}).", param="model",
                            code="model_not_allowed")


def _principal(key: ApiKey) -> Principal:
    limit = key.rate_limit() if isinstance(key, StoredKey) else None
    return Principal(key.id, key.tenant, key.admin, key.models, limit)


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        self._by_hash = {k.sha256: k for k in config.keys}

    def principal(self, headers: Mapping[str, str],
                  stored: Mapping[str, StoredKey] | None = None,
                  store_read: bool = True) -> Principal:
        """The key presenting the request: the profile's keys first, then the key store's
        (`stored`, by hash). `store_read` False: the store was never read (Redis down
        since start), so an unknown key may be a stored one: 503, not 401."""
        auth = headers.get("authorization") or ""
        scheme, _, secret = auth.partition(" ")
        digest = key_hash(secret.strip()) if scheme.lower() == "bearer" and secret.strip() else ""
        found: ApiKey | None = None
        if digest:
            found = self._by_hash.get(digest) or (stored or {}).get(digest)
        if found is not None:
            return _principal(found)
        if self._config.required:
            if digest and not store_read:
                raise Unavailable("API keys cannot be checked now (the key store is "
                                  "unreachable); retry shortly.", retry_after_s=1,
                                  code="key_store_unavailable")
            raise Unauthorized("Incorrect or missing API key: send `Authorization: Bearer "
                               "<key>` with a key this platform issued.")
        return Principal(ANONYMOUS, DEFAULT_TENANT)

    def tags(self, headers: Mapping[str, str]) -> tuple[str, ...]:
        raw = headers.get(TAGS_HEADER)
        if not raw:
            return ()
        # spaces and tabs around a tag are HTTP's optional whitespace; any other character
        # (a no-break space too, which str.strip() would drop) is part of the tag
        tags = tuple(dict.fromkeys(t.strip(" \t") for t in raw.split(",") if t.strip(" \t")))
        bad = [t for t in tags if not _TAG.match(t)]
        if bad:
            raise InvalidRequest(f"{TAGS_HEADER}: tag {bad[0][:80]!r} is not 1-64 characters "
                                 "of letters, digits and . _ : = -", param=TAGS_HEADER)
        if len(tags) > self._config.max_tags:
            raise InvalidRequest(f"{TAGS_HEADER}: {len(tags)} tags, at most "
                                 f"{self._config.max_tags} allowed", param=TAGS_HEADER)
        return tags
