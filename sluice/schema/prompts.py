"""Prompt templates: named system messages the ingress puts first in a chat request.

The profile declares them (`prompts: {support: {system: ...}, "support@v2": {system: ...}}`);
a request picks one with `x-sluice-prompt: support`. A template named `base@label` is a
version of `base`: clients may ask for it by name, and a rollout of `prompt:support`
(`sluice rollout start --prompt support --to v2`) gives it a share of the requests that ask
for `support` (`sluice.pipeline.prompt_stage`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

from sluice.schema.base import Frozen, base_of, label_of

_LABEL = r"[a-z0-9][a-z0-9._-]{0,63}"
# a template, or a version of one (`support@v2`): the `x-sluice-prompt` header's pattern too
NAME = rf"{_LABEL}(@{_LABEL})?"
NAME_PATTERN = rf"^{NAME}$"
# how rollouts (and the ledger) name a template, apart from the models: `prompt:support@v2`
PREFIX = "prompt:"


class PromptTemplate(Frozen):
    """One template: the system message it puts first in a chat."""

    system: str = Field(min_length=1, max_length=65_536, description="The system message.")
    replace: bool = Field(default=False, description="Replace the request's own system (and "
                          "developer) messages; false: keep them after the template's.")
    version: str = Field(default="v1", pattern=rf"^{_LABEL}$",
                         description="The template's label (`x-sluice-prompt-variant`); a "
                         "template named `base@label` is that label, whatever this says.")
    description: str = Field(default="", description="What it is for (documentation).")


def base(name: str) -> str:
    """The template clients ask for: `support` for `support` and for `support@v2`."""
    return base_of(name)


def label(name: str, template: PromptTemplate) -> str:
    """A version's label: `v2` for `support@v2`, else the template's `version`."""
    return label_of(name, template.version)


def _versions_have_a_base(templates: dict[str, PromptTemplate]) -> dict[str, PromptTemplate]:
    for name in templates:
        if base(name) not in templates:
            raise ValueError(f"prompt template '{name}' is a version of '{base(name)}', "
                             "which is not a template")
    return templates


PromptTemplates = Annotated[
    dict[Annotated[str, StringConstraints(pattern=NAME_PATTERN)], PromptTemplate],
    AfterValidator(_versions_have_a_base)]
