"""What a rollout may name: every model, cascade route and prompt template with its versions.

A rollout moves the traffic of one *target* between two of its versions, and the controller
knows each version by one name: a catalog model (`large`, `large@v2`), a cascade route of
the routes file (`auto`, `auto@v2`), or a prompt template of the profile, prefixed so it
cannot be mistaken for a model (`prompt:support`, `prompt:support@v2`). Each maps to the
target clients ask for and its label (`x-sluice-variant`, `x-sluice-prompt-variant`).
"""

from __future__ import annotations

from sluice.schema import prompts
from sluice.schema.platform import PlatformConfig


def versions(config: PlatformConfig) -> dict[str, tuple[str, str]]:
    """Every version's name -> (its target, its label)."""
    out = {m.name: (m.base, m.variant) for m in config.catalog.models}
    for route in config.routing.routes if config.routing else ():
        out[route.name] = (route.base, route.variant)
    for name, template in config.profile.prompts.items():
        out[prompts.PREFIX + name] = (prompts.PREFIX + prompts.base(name),
                                      prompts.label(name, template))
    return out


def always_served(config: PlatformConfig) -> set[str]:
    """The versions every ingress replica can answer with (a model's needs a deployment
    here; a route's and a prompt template's are the ingress's own)."""
    return ({r.name for r in (config.routing.routes if config.routing else ())}
            | {prompts.PREFIX + name for name in config.profile.prompts})
