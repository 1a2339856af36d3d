"""A request's prompt in tokens, counted as its engine will count them, before it is sent.

A chat is rendered with the model's own chat template (the tokenizer's `chat_template`, with
the request's `add_generation_prompt`, `continue_final_message`, `tools` and
`chat_template_kwargs`) and tokenized without special tokens (the template writes them), as
vLLM's OpenAI server does. A message's content reaches the template as vLLM hands it over:
as a list of text parts when the template iterates parts (vLLM's own detection of the
template's content format), else as one string, the text parts joined with a newline. A completion prompt is tokenized with the
special tokens (vLLM's default `add_special_tokens`); token-id prompts are counted as they
are. Parts that are not text (images, audio) are not counted: for them the engine's own
check stays the last word (its 400 is still `context_length_exceeded`).

Tokenizers are loaded once per model source, on first use, with `transformers` (already a
dependency of vLLM). A long prompt is counted in a worker thread so the ingress's event loop
keeps serving other requests meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

LLMRequest = ChatCompletionRequest | CompletionRequest
INLINE_CHARS = 2048  # shorter prompts are counted on the loop (a thread hop costs more)
Messages = list[dict[str, Any]]


def _text_parts(content: Any) -> Any:
    """A message's content with only its text parts (a string stays a string)."""
    if content is None or isinstance(content, str):
        return content
    return [{"type": "text", "text": p.get("text") or ""} for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text")]


def plain_messages(messages: Sequence[Any]) -> Messages:
    """The messages as plain dicts, their content text only (each model's template then
    takes it as a string or as parts: `ModelTokens`)."""
    out = []
    for message in messages:
        m = dict(message) if isinstance(message, dict) else message.model_dump(
            exclude_none=True)
        m["content"] = _text_parts(m.get("content"))
        out.append(m)
    return out


def content_format(template: Any) -> str:
    """'openai' when the chat template iterates a message's content parts, else 'string':
    vLLM's own detection (its renderer decides the same way, on the same template)."""
    if not isinstance(template, str):
        return "string"
    try:
        from vllm.renderers.hf import _detect_content_format
    except ImportError:  # (another vLLM: the engine's check stays the last word)
        return "string"
    return str(_detect_content_format(template, default="string"))


def _as_format(content: Any, fmt: str) -> Any:
    """As vLLM hands content to the template: parts (a string is one text part, null is no
    parts) for 'openai'; for 'string', the text parts joined with a newline."""
    if fmt == "openai":
        if content is None:
            return []
        return [{"type": "text", "text": content}] if isinstance(content, str) else content
    if content is None or isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content)


class ModelTokens:
    """One model's tokenizer: its chat prompt or completion prompt in tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._format = content_format(getattr(tokenizer, "chat_template", None))
        self._lock = threading.Lock()  # (a fast tokenizer is not safe to share mid-call)

    def chat(self, messages: Messages, request: ChatCompletionRequest | None = None) -> int:
        kwargs: dict[str, Any] = {"add_generation_prompt": True}
        if request is not None:
            kwargs["add_generation_prompt"] = request.add_generation_prompt
            if request.continue_final_message:
                kwargs["continue_final_message"] = True
            if request.tools:
                kwargs["tools"] = [t.model_dump(exclude_none=True) if hasattr(t, "model_dump")
                                   else t for t in request.tools]
            kwargs.update(request.chat_template_kwargs or {})
        rendered = [{**m, "content": _as_format(m.get("content"), self._format)}
                    for m in messages]
        with self._lock:
            text = self._tokenizer.apply_chat_template(rendered, tokenize=False, **kwargs)
            add = bool(request is not None and request.add_special_tokens)
            return len(self._tokenizer(text, add_special_tokens=add)["input_ids"])

    def completion(self, prompt: Any) -> int:
        """The longest of the request's prompts (each is its own sequence)."""
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(
            prompt[0], int) else [prompt]
        longest = 0
        for p in prompts:
            if isinstance(p, list):
                longest = max(longest, len(p))
            else:
                with self._lock:
                    longest = max(longest, len(self._tokenizer(str(p))["input_ids"]))
        return longest


def _load(source: str) -> ModelTokens:
    from transformers import AutoTokenizer

    return ModelTokens(AutoTokenizer.from_pretrained(source))


class TokenCounter:
    """Prompt tokens per model; a model whose tokenizer cannot be loaded is not counted
    (None: the engine decides, as before), said once in the log."""

    def __init__(self, sources: dict[str, str],
                 load: Callable[[str], ModelTokens] = _load) -> None:
        self._sources, self._load = sources, load
        self._loaded: dict[str, ModelTokens | None] = {}
        self._lock = threading.Lock()

    def knows(self, model: str) -> bool:
        return model in self._sources

    def loaded(self, model: str) -> bool:
        return model in self._loaded

    def tokens_of(self, model: str) -> ModelTokens | None:
        with self._lock:
            if model not in self._loaded:
                source = self._sources[model]
                try:
                    self._loaded[model] = self._load(source)
                except (OSError, ValueError, ImportError) as exc:
                    log.warning("no tokenizer for model %s (%s): its context is checked by "
                                "its engine only: %s", model, source, exc)
                    self._loaded[model] = None
            return self._loaded[model]

    def count_now(self, model: str, request: LLMRequest,
                  messages: Messages | None = None) -> int | None:
        tokens = self.tokens_of(model)
        if tokens is None:
            return None
        if isinstance(request, ChatCompletionRequest):
            return tokens.chat(messages if messages is not None
                               else plain_messages(request.messages), request)
        return tokens.completion(request.prompt)
