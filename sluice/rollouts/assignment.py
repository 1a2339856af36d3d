"""Sticky assignment of a request to a variant.

A subject (a user id header, else the key id, else the request id: see `subject`; or what
the rollout's `split_by` names: the user, the key or the tenant, see `subjects`) is hashed
with the rollout's salt to a bucket in [0, 1); the variants take consecutive ranges of it in
their listed order. The canary is listed first, so its range [0, share) only grows as its
share does: a user who got the canary at 5% still gets it at 10%, 25%, ... and nobody flips
back and forth between variants while a rollout advances. A different salt per rollout
draws a different 5% of users for the next one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

DEFAULT = "default"  # the profile's rule (`subject`), for a rollout without `split_by`

_SCALE = float(2**64)


def bucket(subject: str, salt: str) -> float:
    """A stable point in [0, 1) for this subject under this salt (BLAKE2b, not Python's
    per-process hash: every ingress replica and every restart must agree)."""
    digest = hashlib.blake2b(f"{salt}\x00{subject}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def choose(subject: str, salt: str, shares: Sequence[tuple[str, float]]) -> str:
    """The variant whose range holds the subject's bucket. Shares are fractions summing to
    1 (within rounding); the last variant takes whatever rounding leaves."""
    if not shares:
        raise ValueError("no variants to choose from")
    point, edge = bucket(subject, salt), 0.0
    for name, share in shares:
        edge += share
        if point < edge:
            return name
    return shares[-1][0]


def subject(headers: Mapping[str, str], key_id: str, request_id: str,
            sticky_header: str | None) -> str:
    """What a request is assigned by: the configured user header when present (a user
    stays in one arm), else the API key (an application stays in one arm), else the request
    itself (no stickiness possible: an anonymous caller)."""
    if sticky_header:
        value = headers.get(sticky_header)
        if value:
            return f"h:{value}"
    if key_id:
        return f"k:{key_id}"
    return f"r:{request_id}"


def subjects(headers: Mapping[str, str], key_id: str, tenant: str, request_id: str,
             sticky_header: str | None, sticky_key: bool) -> dict[str, str]:
    """Who a request is, each way a rollout may split (plain strings: it travels with the
    request): `default`, the profile's rule (`subject`: the user header, else the key where
    `sticky_key`, else the request); `user`, the user header, else the key; `key`, the API
    key (an application stays in one arm); `tenant`, the key's tenant (a whole tenant in
    one arm)."""
    by_key = subject({}, key_id, request_id, None)
    return {DEFAULT: subject(headers, key_id if sticky_key else "", request_id, sticky_header),
            "user": subject(headers, key_id, request_id, sticky_header),
            "key": by_key, "tenant": f"t:{tenant}" if tenant else by_key}


def pick(said: str | Mapping[str, str], split_by: str | None) -> str:
    """The subject a rollout splitting by `split_by` (None: the profile's rule) hashes: from
    `subjects`, or a plain subject as it is."""
    if isinstance(said, str):
        return said
    return said.get(split_by or DEFAULT) or said.get(DEFAULT) or ""
