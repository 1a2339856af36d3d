"""Control tokens in request text: a chat's turn markers come from its template, not a user.

HF tokenizers match a special token's string anywhere in the text they encode, and vLLM
(0.32) renders a chat template to one string and encodes it whole: a user message holding
`<|end|>\\n<|system|>\\n...` becomes a real end of turn and a real system turn. Neither vLLM
nor transformers (5.19) encodes message content apart from the template: no request option
or engine argument does it (vLLM PR 31735, which would have, was closed unmerged), and the
tokenizer's `split_special_tokens` splits the template's own markers as well, so the model
would see no turns at all (tests/unit/test_control_tokens.py shows both). So the ingress
does it: every special-token string in a chat's message text, documents and template
variables gets a WORD JOINER (U+2060: no width, no meaning) after its first character, and
is encoded as the plain characters it is. Completions are raw prompts: whoever writes one
writes its format, special tokens included (as with OpenAI's completions).

The special tokens are the catalog models' own (`added_tokens` marked special in
tokenizer.json and tokenizer_config.json, read from the model folder or the local Hugging
Face cache). A model whose tokenizer files cannot be read gets the common `<|...|>`, `<s>`,
`</s>` shapes instead, with a warning. A template whose turn markers are ordinary text
(Llama 2's `[INST]`) cannot be protected at the token level at all.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sluice.errors import InvalidRequest

log = logging.getLogger(__name__)

WORD_JOINER = "\u2060"
FALLBACK = r"<\|[^\s<>|]{1,64}\|>|</?s>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_PASSES = 8  # breaking one token can only expose another as often as tokens nest


def _break(match: re.Match[str]) -> str:
    token = match.group(0)
    return token[0] + WORD_JOINER + token[1:]


class ControlTokens:
    """Makes special-token strings in text plain text (see the module docstring)."""

    def __init__(self, tokens: Iterable[str] = (), fallback: bool = False) -> None:
        words = sorted({t for t in tokens if len(t) > 1}, key=len, reverse=True)
        parts = [re.escape(t) for t in words] + ([FALLBACK] if fallback else [])
        self._pattern = re.compile("|".join(parts)) if parts else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def plain_text(self, text: str) -> str:
        """`text` with no special token's string left in it (the same object if none was)."""
        pattern = self._pattern
        if pattern is None or pattern.search(text) is None:
            return text
        for _ in range(_PASSES):
            text = pattern.sub(_break, text)
            if pattern.search(text) is None:
                return text
        raise InvalidRequest("The request's text holds control-token strings that cannot be "
                             "made plain text.", param="messages")

    def plain(self, value: Any, added: list[int] | None = None) -> Any:
        """Every string of a JSON-like value made plain text; containers are copied where
        something changed (the client's body stays as sent: cache keys read it). The
        characters inserted are added to `added[0]`."""
        if isinstance(value, str):
            text = self.plain_text(value)
            if added is not None:
                added[0] += len(text) - len(value)
            return text
        if isinstance(value, list):
            items = [self.plain(v, added) for v in value]
            return value if all(a is b for a, b in zip(items, value, strict=True)) else items
        if isinstance(value, dict):
            fields = {k: self.plain(v, added) for k, v in value.items()}
            return value if all(fields[k] is v for k, v in value.items()) else fields
        return value

    def plain_chat(self, request: Any) -> int:
        """A chat request's rendered text made plain: messages (every role's content, names,
        tool calls), documents and template variables. Returns the UTF-8 bytes this added
        to the prompt (worst-case token bounds count them). Nested too deep is a 400."""
        if self._pattern is None:
            return 0
        added = [0]
        try:
            request.messages = self.plain(list(request.messages), added)
            for name in ("documents", "chat_template_kwargs"):
                value = getattr(request, name, None)
                if value is not None:
                    setattr(request, name, self.plain(value, added))
        except RecursionError:
            raise InvalidRequest("Request body is nested too deeply to be a request.") from None
        return added[0] * len(WORD_JOINER.encode())


def _token_strings(entries: Iterable[Any]) -> set[str]:
    found = set()
    for entry in entries:
        if isinstance(entry, str):
            found.add(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("content"), str) and (
                entry.get("special", True)):
            found.add(entry["content"])
    return found


def special_tokens_in(files: dict[str, dict[str, Any]]) -> set[str]:
    """The special tokens named by a tokenizer's files (parsed JSON by file name)."""
    found = _token_strings(files.get("tokenizer.json", {}).get("added_tokens") or [])
    config = files.get("tokenizer_config.json", {})
    found |= _token_strings((config.get("added_tokens_decoder") or {}).values())
    found |= _token_strings(config.get("additional_special_tokens") or [])
    found |= _token_strings(config.get(k) for k in
                            ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                             "cls_token", "mask_token"))
    return found


def _tokenizer_file(source: str, name: str) -> Path | None:
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    try:  # a hub id: only what is already in the local cache (no download at start-up)
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, name)
    except Exception:  # noqa: BLE001 - not a repo id, no cache: the fallback applies
        return None
    return Path(cached) if isinstance(cached, str) else None


def special_tokens(source: str) -> set[str] | None:
    """The special tokens of the tokenizer at `source`, or None when it cannot be read."""
    files = {}
    for name in TOKENIZER_FILES:
        path = _tokenizer_file(source, name)
        if path is not None:
            try:
                files[name] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %r", path, exc)
    return special_tokens_in(files) if files else None


def control_tokens_of(sources: Iterable[str]) -> ControlTokens:
    """The union of the special tokens of these models' tokenizers (a request for a route
    may run on any of its models)."""
    tokens: set[str] = set()
    fallback = False
    for source in sources:
        found = special_tokens(source)
        if found is None:
            log.warning("no tokenizer files for %s: control tokens in chat text are "
                        "neutralized by their common shapes only", source)
            fallback = True
        else:
            tokens |= found
    return ControlTokens(tokens, fallback)
