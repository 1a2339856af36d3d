"""Who is asking: API keys, the tenant each belongs to, and the request's tags.

Keys are configured by id with the SHA-256 of the secret, so the profile never holds a usable
key (`sluice keys new` mints one). A request presents `Authorization: Bearer <key>`, as every
OpenAI client does.

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

from sluice.errors import Forbidden, InvalidRequest, Unauthorized
from sluice.schema.accounting import ANONYMOUS, AuthConfig

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


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._config = config
        self._by_hash = {k.sha256: k for k in config.keys}

    def principal(self, headers: Mapping[str, str]) -> Principal:
        auth = headers.get("authorization") or ""
        scheme, _, secret = auth.partition(" ")
        found = (self._by_hash.get(key_hash(secret.strip()))
                 if scheme.lower() == "bearer" and secret.strip() else None)
        if found is not None:
            return Principal(found.id, found.tenant, found.admin)
        if self._config.required:
            raise Unauthorized("Incorrect or missing API key: send `Authorization: Bearer "
                               "<key>` with a key this platform issued.")
        return Principal(ANONYMOUS, DEFAULT_TENANT)

    def tags(self, headers: Mapping[str, str]) -> tuple[str, ...]:
        raw = headers.get(TAGS_HEADER)
        if not raw:
            return ()
        tags = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
        bad = [t for t in tags if not _TAG.match(t)]
        if bad:
            raise InvalidRequest(f"{TAGS_HEADER}: tag {bad[0][:80]!r} is not 1-64 characters "
                                 "of letters, digits and . _ : = -", param=TAGS_HEADER)
        if len(tags) > self._config.max_tags:
            raise InvalidRequest(f"{TAGS_HEADER}: {len(tags)} tags, at most "
                                 f"{self._config.max_tags} allowed", param=TAGS_HEADER)
        return tags
