"""Step 5 of the handler's order, before the context gate: a chat's long context compressed,
when its model's policy or the request (`x-sluice-compress`) asks.

What is compressed: the text of every message before the latest user message that is at least
`min_message_tokens` long (system documents, earlier turns, retrieved passages), in prompts
of `min_prompt_tokens` to `max_prompt_tokens` (the bound on what one request may cost); what is
never: the latest user message and anything after it, short messages (instructions), code
blocks and structured data (`sluice.compression.units`), a compressed message's first
paragraph when it is that short too (an instruction heading a document), messages with parts
other than text, completion prompts (no turn tells the question from the context), and
prompts under `min_prompt_tokens`. The question the context is compressed for is the latest user message.

Counted in the first model's tokens (the model asked for, or a route's first stage) before
and after (the request's note:
`1800->700 tokens`); the saved tokens are priced at that model's input price. The body as
sent is unchanged; the response cache keys a compressed request apart (`cache_scope`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ray.serve.llm.openai_api_models import ChatCompletionRequest

from sluice.compression.compressor import compress
from sluice.compression.methods import METHODS, selector
from sluice.errors import InvalidRequest, SluiceError
from sluice.pipeline.request import ParsedRequest
from sluice.pipeline.token_counter import TokenCounter, plain_messages
from sluice.router.features import Embedder
from sluice.router.static import StaticRouter
from sluice.schema.compression import CompressionPolicy, CompressionSettings

HEADER = "x-sluice-compress"
_SETTING = r"(ratio=0?\.[0-9]*[1-9][0-9]*|method=(relevance|salience))"
PATTERN = rf"^(on|off|{_SETTING}( *; *{_SETTING})*)$"  # what the API document states
Price = Callable[[str, int, int], float]  # (model, prompt tokens, completion tokens) -> USD
Record = Callable[[str, str, int], None]  # (model, method, tokens saved)


@dataclass(frozen=True)
class Compressed:
    """What compression did to one request (the header, the ledger and /v1/usage say it)."""

    before: int  # prompt tokens as sent
    after: int  # prompt tokens sent to the engine
    saved_usd: float
    method: str
    model: str  # whose tokens counted them (the model asked for, or a route's first stage)

    @property
    def saved_tokens(self) -> int:
        return max(0, self.before - self.after)

    @property
    def note(self) -> str:
        return f"{self.before}->{self.after} tokens"


def parse_header(value: str, base: CompressionPolicy) -> CompressionPolicy:
    """`on`, `off`, or `ratio=R` and/or `method=M` separated by `;`, over `base`: exactly what
    the API document's pattern states (anything else is a 400)."""
    text = value.strip()
    if not re.fullmatch(PATTERN, text):
        raise InvalidRequest(f"Header '{HEADER}' takes on, off, or ratio=R (a decimal between "
                             f"0 and 1, the share of the context kept) and/or method=M "
                             f"({', '.join(METHODS)}), separated by ';'; got {value[:60]!r}.",
                             param=HEADER)
    if text in ("on", "off"):
        return base.model_copy(update={"enabled": text == "on"})
    update: dict[str, Any] = {"enabled": True}
    for part in text.split(";"):
        key, _, raw = (s.strip() for s in part.partition("="))
        update[key] = float(raw) if key == "ratio" else raw
    return base.model_copy(update=update)


def _content(message: Any) -> Any:
    return message.get("content") if isinstance(message, dict) else getattr(
        message, "content", None)


class CompressStage:
    def __init__(self, settings: CompressionSettings, router: StaticRouter,
                 counter: TokenCounter, embedder: Callable[[], Embedder], price: Price,
                 record: Record, workers: int = 2) -> None:
        self._settings, self._router, self._counter = settings, router, counter
        self._embedder, self._price, self._record = embedder, price, record
        # its own bounded pool: compressions queue here, not in the loop's default executor
        # (where token counting and the semantic cache's embeddings run)
        self._pool = ThreadPoolExecutor(max_workers=workers,
                                        thread_name_prefix="sluice-compress")

    def policy(self, request: ParsedRequest) -> CompressionPolicy:
        """The policy of the model or route asked for (a selection route's own name too,
        before its choice), as the request's header changes it (400 for a bad header)."""
        asked_model = str(request.body.get("model") or request.llm.model)
        base = (self._settings.models.get(asked_model)
                or self._settings.of(str(request.llm.model)))
        asked = request.headers.get(HEADER)
        if asked is None or not self._settings.client_choice:
            return base
        return parse_header(asked, base)

    async def apply(self, request: ParsedRequest) -> Compressed | None:
        llm, name = request.llm, str(request.llm.model)
        policy = self.policy(request)
        if not policy.enabled or not isinstance(llm, ChatCompletionRequest):
            return None
        try:
            first = self._router.stages(name)[0].name
        except (SluiceError, IndexError):
            return None  # an unknown model: the router's 404 comes later
        if not self._counter.knows(first):
            return None  # a hosted model: its tokens are the provider's to count
        originals = list(llm.messages)
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(self._pool, self._compress, first, llm, originals,
                                          policy)
        if done is None:
            return None
        kept, before, after = done
        for i, text in kept.items():
            message = originals[i]
            copy = dict(message) if isinstance(message, dict) else message.model_dump(
                exclude_none=True)
            copy["content"] = text
            originals[i] = copy
        llm.messages = originals
        request.cache_scope = f"~compressed:{policy.method}:{policy.ratio}"
        saved = max(0, before - after)
        return Compressed(before, after, self._price(first, saved, 0), policy.method, first)

    def counted(self, done: Compressed) -> None:
        """Its savings into the metrics, once an engine answered the compressed prompt."""
        self._record(done.model, done.method, done.saved_tokens)

    def _compress(self, model: str, llm: ChatCompletionRequest, originals: list[Any],
                  policy: CompressionPolicy) -> tuple[dict[int, str], int, int] | None:
        tokens = self._counter.tokens_of(model)  # (its first use loads it: off the loop)
        if tokens is None:
            return None
        messages = plain_messages(originals)
        before = tokens.chat(messages, llm)
        if not policy.min_prompt_tokens <= before <= policy.max_prompt_tokens:
            return None
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"),
                        default=None)
        if last_user is None:
            return None
        question = _text(messages[last_user].get("content")) or ""

        def length(text: str) -> int:
            return tokens.completion(text)

        # the original content: a message with an image part is not text only, and is kept
        texts = {i: t for i in range(last_user)
                 if (t := _text(_content(originals[i]))) is not None
                 and length(t) >= policy.min_message_tokens}
        if not texts:
            return None
        select = selector(policy.method, self._embedder())
        shorter = compress(list(texts.values()), question, policy.ratio, select, length,
                           lead_tokens=policy.min_message_tokens)
        kept = {i: t for (i, old), t in zip(texts.items(), shorter, strict=True) if t != old}
        if not kept:
            return None
        after = tokens.chat([{**m, "content": kept.get(i, m.get("content"))}
                             for i, m in enumerate(messages)], llm)
        return kept, before, after


def _text(content: Any) -> str | None:
    """A message's text: a string, or a list of text parts only (else None: not touched)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(p.get("text") or "" for p in content)
    return None
