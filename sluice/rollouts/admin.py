"""The rollouts' admin API (`/v1/admin/rollouts`): who may use it, and its request body.

An admin key is needed where the profile requires keys; a profile without required keys
(the local `make serve`) lets an anonymous caller manage rollouts, as it lets one use
everything else. A known key that is not an admin's is refused either way.
"""

from __future__ import annotations

import json

import pydantic

from sluice.accounting.key_admin import check_admin
from sluice.accounting.tenancy import Principal
from sluice.errors import InvalidRequest
from sluice.schema.accounting import ANONYMOUS
from sluice.schema.rollouts import RolloutSpec

MAX_BODY_BYTES = 16_384


def check_operator(principal: Principal, keys_required: bool) -> None:
    if principal.key_id == ANONYMOUS and not keys_required:
        return
    check_admin(principal)


def spec_of(raw: bytes) -> RolloutSpec:
    """The rollout a request body asks for (400 names a bad or unknown field)."""
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(f"A rollout's body is at most {MAX_BODY_BYTES} bytes.")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    try:
        return RolloutSpec.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"Invalid value for '{field}': {first['msg']}",
                             param=field) from None
