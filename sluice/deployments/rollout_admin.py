"""The rollouts' admin API (`/v1/admin/rollouts`): who may use it, and its request body.

An admin key is needed where the profile requires keys; a profile without required keys
(the local `make serve`) lets an anonymous caller manage rollouts, as it lets one use
everything else. A known key that is not an admin's is refused either way.
"""

from __future__ import annotations

import pydantic

from sluice.accounting.key_admin import check_admin
from sluice.accounting.tenancy import Principal
from sluice.errors import PayloadTooLarge, invalid_value
from sluice.pipeline.request_body import decode_json
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
        raise PayloadTooLarge(f"A rollout's body is at most {MAX_BODY_BYTES} bytes.")
    try:
        return RolloutSpec.model_validate(decode_json(raw))
    except pydantic.ValidationError as exc:
        raise invalid_value(exc.errors()) from None
