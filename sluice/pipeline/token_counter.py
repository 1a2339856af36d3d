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

Before counting, a prompt has a cheap floor (`ModelTokens.floor`): its rendered text's bytes
over the most bytes one token of the vocabulary stands for (`TokenBytes`), never more than
the count, so a prompt whose floor already overflows is refused without tokenizing it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


# Pre-tokenizers that drop no text (ByteLevel maps each byte to one character; Metaspace
# replaces a space with "\u2581", three bytes in the vocabulary); Split and Punctuation
# unless their behavior removes what they match. Whitespace, WhitespaceSplit, Bert and
# CharDelimiterSplit drop text: no floor.
_KEEPING = frozenset({"ByteLevel", "Metaspace", "Digits", "Split", "Punctuation"})
# Normalizers applied per character or per combining sequence, so normalizing the whole
# rendered text never gives more bytes than the tokenizer's normalizing of the pieces between
# its added tokens (see `TokenBytes`). Strip, Precompiled charsmaps, regex replacements (a
# run of spaces made one) and the rest: no floor.
_SHRINKING = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents"})
_UNK_BYTES = 4  # an unknown token (not fused) stands for one character: at most 4 bytes


@dataclass(frozen=True)
class TokenBytes:
    """The most bytes of (normalized) text one token of a tokenizer stands for, so a text of
    B bytes is at least ceil(B / most) tokens.

    Why it is a floor: the tokens of a text are its added tokens (each its content, at most
    `most` bytes) and the model's tokens of the normalized, pre-tokenized pieces between
    them, whose vocabulary strings concatenate to those pieces (no unknown token, no text
    dropped: `token_bytes` refuses tokenizers where either can happen). A vocabulary string
    never stands for more bytes than it has: a byte-level BPE token's characters are one byte
    each (counted as characters), a SentencePiece token's "\u2581" is a 1-byte space but 3
    bytes, a byte-fallback token "<0xE4>" is 1 byte but 6. The chat template may add or drop
    text (Llama 3 trims each message, reasoning models drop old thoughts): the floor is on
    the rendered text, never on the messages. `normalize`: the tokenizer's own normalizer
    where it can make text shorter (NFC composes "e" and a combining accent, 3 bytes, into
    "\u00e9", 2), applied to the whole text, which shortens it no less than the tokenizer's
    normalizing of its pieces (its added tokens are ASCII, unchanged by these normalizers and
    composing with nothing before them); None: the text's own bytes (no normalizer, or one
    that only adds: Llama 2's Prepend and Replace of a space by "\u2581")."""

    most: int
    normalize: Callable[[str], str] | None = None

    def floor(self, text: str) -> int:
        if self.normalize is not None and not text.isascii():  # (ASCII: unchanged)
            text = self.normalize(text)
        size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
        return -(-size // self.most)


def _keeps_text(pre: dict[str, Any] | None) -> bool:
    if pre is None:
        return True
    if pre.get("type") == "Sequence":
        return all(_keeps_text(p) for p in pre.get("pretokenizers", []))
    return pre.get("type") in _KEEPING and pre.get("behavior") != "Removed"


def _byte_level(pre: dict[str, Any] | None) -> bool:
    if pre is None:
        return False
    if pre.get("type") == "Sequence":
        return any(_byte_level(p) for p in pre.get("pretokenizers", []))
    return pre.get("type") == "ByteLevel"


def _normalizer_steps(norm: dict[str, Any] | None) -> list[dict[str, Any]]:
    if norm is None:
        return []
    if norm.get("type") == "Sequence":
        return [s for n in norm.get("normalizers", []) for s in _normalizer_steps(n)]
    return [norm]


def _shrinks(steps: list[dict[str, Any]], protected: list[str]) -> bool | None:
    """Whether the normalizer can make text shorter (None: not one the floor knows, or one
    whose whole-text run could change the text of an added token it never sees)."""
    shrinks, replaced = False, []
    for step in steps:
        kind = step.get("type")
        if kind == "Prepend":
            continue
        if kind == "Replace":
            pattern = step.get("pattern", {}).get("String")
            if not isinstance(pattern, str) or len(pattern) != 1:
                return None  # a regex (a run of spaces made one)
            replaced.append(pattern)
            shrinks |= len(str(step.get("content", "")).encode()) < len(pattern.encode())
        elif kind in _SHRINKING:
            shrinks = True
        else:
            return None
    if shrinks and not all(p.isascii() and not any(c in p for c in replaced)
                           for p in protected):
        return None
    return shrinks


def token_bytes(tokenizer: Any) -> TokenBytes | None:
    """The tokenizer's `TokenBytes`, from its vocabulary, once per model; None where no
    sound floor is known (not a fast tokenizer, text dropped or fused into an unknown token,
    added tokens that swallow the whitespace beside them, a normalizer not known here)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    pre, model = spec.get("pre_tokenizer"), spec.get("model") or {}
    added = spec.get("added_tokens") or []
    if not _keeps_text(pre) or any(t.get("lstrip") or t.get("rstrip") for t in added):
        return None
    protected = [t["content"] for t in added if not t.get("normalized")]
    shrinks = _shrinks(_normalizer_steps(spec.get("normalizer")), protected)
    if shrinks is None:
        return None
    byte_level = _byte_level(pre)
    kind = model.get("type")
    if kind == "BPE":
        vocab = list(model.get("vocab") or {})
    elif kind == "Unigram":
        vocab = [piece for piece, _ in model.get("vocab") or []]
    else:  # WordPiece (a long word is one unknown token), WordLevel
        return None
    known = set(vocab)
    most = 1
    if byte_level:  # every byte is a vocabulary character: nothing is unknown
        from tokenizers.pre_tokenizers import ByteLevel

        if not set(ByteLevel.alphabet()) <= known:
            return None
        most = max((len(v) for v in vocab), default=1)
    else:
        fallback = model.get("byte_fallback") and all(
            f"<0x{b:02X}>" in known for b in range(256))
        if not fallback:
            if kind != "BPE" or not model.get("unk_token") or model.get("fuse_unk"):
                return None  # an unknown run fused into one token, or dropped
            most = _UNK_BYTES
        most = max(most, max((len(v.encode("utf-8", "surrogatepass")) for v in vocab),
                             default=1))
    most = max([most, *(len(t["content"].encode()) for t in added)])
    return TokenBytes(most, backend.normalizer.normalize_str if shrinks else None)


def _token_bytes(tokenizer: Any) -> TokenBytes | None:
    try:
        return token_bytes(tokenizer)
    except (ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
        # (a tokenizer this code does not know: counted, not floored)
        log.warning("no token-count floor for this tokenizer: %r", exc)
        return None


@dataclass(frozen=True)
class Prompt:
    """A request's prompt as its model's tokenizer takes it: a chat rendered with its
    template (one text), or a completion's prompts (texts, or token ids), each counted on
    its own (the longest is the request's)."""

    parts: tuple[str | list[int], ...]
    special: bool  # add the tokenizer's special tokens (BOS): only ever adds tokens


class ModelTokens:
    """One model's tokenizer: its chat prompt or completion prompt in tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._format = content_format(getattr(tokenizer, "chat_template", None))
        self._lock = threading.Lock()  # (a fast tokenizer is not safe to share mid-call)
        self.token_bytes = _token_bytes(tokenizer)

    def render(self, messages: Messages, request: ChatCompletionRequest | None = None
               ) -> Prompt:
        """The chat as its template writes it (no tokenizer call: outside the lock)."""
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
        text = self._tokenizer.apply_chat_template(rendered, tokenize=False, **kwargs)
        return Prompt((text,), bool(request is not None and request.add_special_tokens))

    @staticmethod
    def prompts(prompt: Any) -> Prompt:
        """A completion's prompt(s): a text, token ids, or a list of either."""
        many = isinstance(prompt, list) and prompt and not isinstance(prompt[0], int)
        return Prompt(tuple(p if isinstance(p, list) else str(p)
                            for p in (prompt if many else [prompt])), True)

    def count(self, prompt: Prompt) -> int:
        """Its tokens (the longest part's)."""
        longest = 0
        for part in prompt.parts:
            if isinstance(part, list):
                longest = max(longest, len(part))
            else:
                with self._lock:
                    longest = max(longest, len(self._tokenizer(
                        part, add_special_tokens=prompt.special)["input_ids"]))
        return longest

    def floor(self, prompt: Prompt) -> int:
        """At most `count(prompt)`, without tokenizing: 0 where no floor is known."""
        bytes_ = self.token_bytes
        return max((len(p) if isinstance(p, list) else bytes_.floor(p) if bytes_ else 0
                    for p in prompt.parts), default=0)

    def chat(self, messages: Messages, request: ChatCompletionRequest | None = None) -> int:
        return self.count(self.render(messages, request))

    def completion(self, prompt: Any) -> int:
        """The longest of the request's prompts (each is its own sequence)."""
        return self.count(self.prompts(prompt))


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

    def prompt_now(self, model: str, request: LLMRequest,
                   messages: Messages | None = None) -> Prompt | None:
        """The request's prompt as `model`'s tokenizer takes it (None: no tokenizer)."""
        tokens = self.tokens_of(model)
        if tokens is None:
            return None
        if isinstance(request, ChatCompletionRequest):
            return tokens.render(messages if messages is not None
                                 else plain_messages(request.messages), request)
        return tokens.prompts(request.prompt)

    def count_prompt(self, model: str, prompt: Prompt) -> int:
        tokens = self.tokens_of(model)
        assert tokens is not None  # (its prompt was made with it)
        return tokens.count(prompt)

    def floor_prompt(self, model: str, prompt: Prompt) -> int:
        """At most the prompt's count, without tokenizing it (0: no floor known)."""
        tokens = self.tokens_of(model)
        assert tokens is not None
        return tokens.floor(prompt)

    def count_now(self, model: str, request: LLMRequest,
                  messages: Messages | None = None) -> int | None:
        prompt = self.prompt_now(model, request, messages)
        return None if prompt is None else self.count_prompt(model, prompt)
