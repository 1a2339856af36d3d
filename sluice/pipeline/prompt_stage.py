"""Step 5 of the handler's order, after compression and before the context gate: the prompt
template a chat request names (`x-sluice-prompt: support`) put first in its messages.

The profile declares the templates (`sluice.schema.prompts`). The template's system message
goes first; the request's own system and developer messages stay after it, unless the
template says `replace: true` (then they are dropped). Its place before the context gate
means the counted prompt, the context policy, the rate limits and the budget hold all see the
template. A template with versions (`support`, `support@v2`) under a rollout of
`prompt:support` has the rollout pick, per request and sticky, which version a request for
`support` gets (a request that names `support@v2` gets that one). The answer names the
version (`x-sluice-prompt-variant`), the response cache keys each version apart, and the
version is one of the request's `variants` (its rollout's measurements, the ledger).

A header off the name pattern is a 400; a name the profile lacks a 404 `prompt_not_found`;
the header on a completions request a 400 (a template is a chat message). The document's
pattern (`sluice.deployments.openapi`) is `PATTERN`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ray.serve.llm.openai_api_models import ChatCompletionRequest

from sluice.errors import InvalidRequest, NotFound
from sluice.pipeline.engines import SUBJECT_ATTR
from sluice.pipeline.request import ParsedRequest
from sluice.rollouts.controller import Rollouts
from sluice.schema.prompts import NAME, NAME_PATTERN, PREFIX, PromptTemplate, label

HEADER = "x-sluice-prompt"
VARIANT_HEADER = "x-sluice-prompt-variant"  # the answer's: the version applied
PATTERN = NAME_PATTERN  # what the API document states
_NAME = re.compile(NAME)
_REPLACED_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Applied:
    """The template version a request got."""

    name: str  # `support@v2`
    label: str  # `v2` (x-sluice-prompt-variant)

    @property
    def variant(self) -> str:
        """How rollouts and the ledger name it: `prompt:support@v2`."""
        return f"{PREFIX}{self.name}"


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)


class PromptStage:
    def __init__(self, templates: Mapping[str, PromptTemplate],
                 rollouts: Rollouts | None = None) -> None:
        self._templates, self._rollouts = dict(templates), rollouts

    def apply(self, request: ParsedRequest) -> Applied | None:
        """Put the named template first in the request's messages (None: none named)."""
        asked = request.headers.get(HEADER)
        if asked is None:
            return None
        if request.endpoint != "chat" or not isinstance(request.llm, ChatCompletionRequest):
            raise InvalidRequest(f"Header '{HEADER}' names a prompt template, and templates "
                                 "apply to chat requests (/v1/chat/completions) only.",
                                 param=HEADER)
        if not _NAME.fullmatch(asked):
            raise InvalidRequest(f"Header '{HEADER}' must name a prompt template: 1-64 of "
                                 "lowercase letters, digits and '._-', and optionally "
                                 f"'@<version>'; got {asked[:40]!r}.", param=HEADER)
        if asked not in self._templates:
            known = ", ".join(sorted(self._templates)) or "none on this platform"
            raise NotFound(f"The prompt template '{asked}' does not exist; available: "
                           f"{known}.", param=HEADER, code="prompt_not_found")
        name = self._version(asked, request)
        template = self._templates[name]
        messages = list(request.llm.messages)
        if template.replace:
            messages = [m for m in messages if _role(m) not in _REPLACED_ROLES]
        request.llm.messages = [{"role": "system", "content": template.system}, *messages]
        # the bounds that come before any count (budget holds, a hosted model's fit, rate
        # limits' guess) read the body's bytes: the template's are added to them
        request.added_bytes += len(template.system.encode()) + 16
        # its answers are not another version's, nor an edited template's
        request.cache_scope += f"~{PREFIX}{name}:{_digest(template)}"
        applied = Applied(name, label(name, template))
        request.variants.append(applied.variant)
        return applied

    def _version(self, asked: str, request: ParsedRequest) -> str:
        """The version a rollout of the template picks for this request (sticky), else the
        one asked for (also when the picked one is no longer in the profile)."""
        if self._rollouts is None:
            return asked
        subject = getattr(request.llm, SUBJECT_ATTR, None) or ""
        picked = self._rollouts.route(f"{PREFIX}{asked}", subject)
        name = picked.removeprefix(PREFIX)
        return name if name in self._templates else asked


def _digest(template: PromptTemplate) -> str:
    """What the template puts in a prompt, in short (the response cache's scope)."""
    return hashlib.sha256(f"{template.replace}\n{template.system}".encode()).hexdigest()[:12]
