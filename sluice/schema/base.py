"""The one base of every config model.

Frozen, so a validated config can be shared by every component without one changing it under
another; `extra="forbid"`, so a misspelled key fails at startup with its name instead of
being ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
