"""What a rollout may name: every model, cascade route and prompt template with its versions.

A rollout moves the traffic of one *target* between two of its versions, and the controller
knows each version by one name: a catalog model (`large`, `large@v2`), a cascade route of
the routes file (`auto`, `auto@v2`), or a prompt template of the profile, prefixed so it
cannot be mistaken for a model (`prompt:support`, `prompt:support@v2`). Each maps to the
target clients ask for and its label (`x-sluice-variant`, `x-sluice-prompt-variant`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sluice.errors import InvalidRequest, ModelNotFound
from sluice.schema import prompts
from sluice.schema.platform import PlatformConfig
from sluice.schema.rollouts import RolloutSpec


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


def check_spec(spec: RolloutSpec, base: Mapping[str, str], deployed: Collection[str]) -> None:
    """A rollout names something clients ask for (a model, a cascade route, `prompt:NAME`)
    and an existing, deployed version of it: a client's mistake is said here (404, 400),
    before anything is read or written. base: every name -> what clients ask for."""
    if spec.model not in base:
        raise ModelNotFound(f"There is no model '{spec.model}' here (nor a cascade "
                            "route or a `prompt:<template>` of that name).", param="model")
    if base[spec.model] != spec.model:
        raise InvalidRequest(f"'{spec.model}' is a variant: a rollout names the model "
                             "clients ask for.", param="model")
    if spec.candidate not in base:
        raise ModelNotFound(f"There is no variant '{spec.candidate}': add it first (a "
                            "model's to the catalog and its deployment to the profile, "
                            "a route's to the routes file, a prompt template's to the "
                            "profile's prompts).", param="to")
    if spec.candidate not in deployed:
        raise ModelNotFound(f"'{spec.candidate}' is in the catalog but not deployed "
                            "on this platform.", param="to")
    if spec.model.startswith(prompts.PREFIX) and (
            spec.kind == "shadow" or spec.gates.min_agreement is not None):
        # nothing copies a request to another version of a template: such a rollout
        # would run and never compare a pair
        raise InvalidRequest("A prompt template's rollout is a canary or an A/B without "
                             "a quality gate: shadow copies and min_agreement are for "
                             "models and cascade routes.",
                             param="kind" if spec.kind == "shadow" else
                             "gates.min_agreement")
