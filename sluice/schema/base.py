"""The one base of every config model.

Frozen, so a validated config can be shared by every component without one changing it under
another; `extra="forbid"`, so a misspelled key fails at startup with its name instead of
being ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# a version of a model, a cascade route or a prompt template is named `base@label`
VARIANT_SEP = "@"


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def base_of(name: str) -> str:
    """What clients ask for: `large` for `large` and for its version `large@v2`."""
    return name.split(VARIANT_SEP, 1)[0]


def label_of(name: str, version: str) -> str:
    """A version's label: `v2` for `large@v2`, else the entry's own `version`."""
    _, sep, label = name.partition(VARIANT_SEP)
    return label if sep else version


class Versioned:
    """`base` and `variant` of a config entry with a `name` and a `version` (a catalog
    model, a cascade route)."""

    name: str
    version: str

    @property
    def base(self) -> str:
        return base_of(self.name)

    @property
    def variant(self) -> str:
        return label_of(self.name, self.version)
