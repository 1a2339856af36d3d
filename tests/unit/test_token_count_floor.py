"""The prompt's floor (sluice.pipeline.token_counter.TokenBytes): its rendered text's bytes
over the longest token's never exceed the tokenizer's count, on varied text, for the kinds
of tokenizer LLMs ship (byte-level BPE as Llama 3 and GPT, the same with NFC as Qwen,
SentencePiece-style BPE with byte fallback as Llama 2, Mistral and Gemma); tokenizers for
which no floor holds (text dropped or fused into one token) get none, and are counted."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from sluice.pipeline.token_counter import ModelTokens, token_bytes

CODE = '''def fib(n: int) -> int:
    """The n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class Tree:
    def __init__(self):
        self.children: list["Tree"] = []        # aligned comment
'''
TEXTS = {
    "ascii": "The quick brown fox jumps over the lazy dog, again and again. " * 60,
    "code": CODE * 20,
    "cjk": "机器学习是人工智能的一个分支。日本語のテキストも含まれます。" * 60,
    "korean": "한국어 텍스트입니다. 안녕하세요! " * 80,
    # decomposed jamo (3 characters, 9 bytes a syllable): NFC makes each syllable 3 bytes
    "korean_nfd": unicodedata.normalize("NFD", "한국어 텍스트입니다. 안녕하세요! " * 80),
    "emoji": "👩‍👩‍👧‍👦 🇫🇷 😀✨🚀 " * 120,
    "spaces": "a" + " " * 20_000 + "b",
    "whitespace": "\t\n \n\n\t    \r\n" * 1500,
    "combining": "e\u0301" * 1500 + "a\u0308\u0304" * 500 + ">\u0338" * 300,
    "fullwidth": "ＡＢＣ１２３ｘｙｚ" * 400,
    "special_strings": "<|user|> <|end|> <|im_start|> [INST] " * 200,
    "mixed": ("Résumé: naïve café — 東京 🗼 ok\n" + "    x = 1\n" * 3) * 100,
}
CORPUS = [*TEXTS.values(), *(unicodedata.normalize("NFC", t) for t in TEXTS.values()),
          " " * 64, "\n" * 32, "-" * 80, "=" * 80]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")
# Llama 2's shape, and like Llama 3 the content trimmed: a template may drop text
LLAMA2 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
          "{{ m['content'] | trim }} [/INST]{% else %} {{ m['content'] | trim }} "
          "{{ eos_token }}{% endif %}{% endfor %}")
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def _fast(tok: Tokenizer, template: str, **special: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.chat_template = template
    return fast


def _byte_level(nfc: bool, corpus: list[str] = CORPUS) -> Any:
    """GPT-2/Llama 3 style; with nfc, Qwen's (NFC, then its split, then bytes)."""
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+(?!\S)|\s+|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"),
                             "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=3000, special_tokens=["<|im_start|>", "<|im_end|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), max_token_length=64,
        show_progress=False))
    return _fast(tok, CHATML, eos_token="<|im_end|>")


def _sentencepiece(metaspace: bool) -> Any:
    """Llama 2 style (Prepend and Replace normalizers, no pre-tokenizer: a text is one
    word) or the newer conversions' Metaspace pre-tokenizer; BPE with byte fallback."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(  # (SentencePiece's longest piece)
        vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>", *BYTES], limit_alphabet=200,
        max_token_length=16, show_progress=False))
    return _fast(tok, LLAMA2, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def kinds(demo_dir: Path) -> dict[str, ModelTokens]:
    from transformers import AutoTokenizer

    return {"demo (byte-level BPE)": ModelTokens(AutoTokenizer.from_pretrained(demo_dir)),
            "byte-level BPE": ModelTokens(_byte_level(nfc=False)),
            "NFC byte-level BPE (Qwen)": ModelTokens(_byte_level(nfc=True)),
            "SentencePiece BPE (Llama 2)": ModelTokens(_sentencepiece(metaspace=False)),
            "Metaspace BPE (Mistral)": ModelTokens(_sentencepiece(metaspace=True))}


def test_each_kind_has_a_floor_from_its_vocabulary(kinds: dict[str, ModelTokens]) -> None:
    for name, tokens in kinds.items():
        assert tokens.token_bytes is not None, name
        assert tokens.token_bytes.most >= 4, name
    # the normalizer is run only where it can shorten the text
    assert kinds["NFC byte-level BPE (Qwen)"].token_bytes.normalize is not None  # type: ignore[union-attr]
    assert kinds["SentencePiece BPE (Llama 2)"].token_bytes.normalize is None  # type: ignore[union-attr]


@pytest.mark.parametrize("text", list(TEXTS))
def test_the_floor_never_exceeds_the_count(kinds: dict[str, ModelTokens], text: str) -> None:
    content = TEXTS[text]
    for name, tokens in kinds.items():
        for prompt in (tokens.render([{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": content}]),
                       tokens.prompts(content), tokens.prompts([content, "short"])):
            floor, count = tokens.floor(prompt), tokens.count(prompt)
            assert 0 < floor <= count, (name, text, floor, count)


def test_token_ids_are_their_own_floor(kinds: dict[str, ModelTokens]) -> None:
    tokens = next(iter(kinds.values()))
    prompt = tokens.prompts([[1, 2, 3], [4] * 9])
    assert tokens.floor(prompt) == tokens.count(prompt) == 9


def test_the_floor_is_on_the_rendered_and_normalized_text(
        kinds: dict[str, ModelTokens]) -> None:
    """Why the floor reads what the tokenizer reads: the raw messages would break it."""
    llama2 = kinds["SentencePiece BPE (Llama 2)"]
    most = llama2.token_bytes.most  # type: ignore[union-attr]
    spaces = " " * 20_000  # the template trims it away
    prompt = llama2.render([{"role": "user", "content": spaces + "hi"}])
    assert len(spaces) // most > llama2.count(prompt) >= llama2.floor(prompt)
    # NFC makes a decomposed syllable (3 jamo, 9 bytes) one character (3 bytes): a vocabulary
    # of composed syllables counts the decomposed text at a third of its bytes' worth
    qwen = ModelTokens(_byte_level(nfc=True, corpus=["각" * 5000]))
    most = qwen.token_bytes.most  # type: ignore[union-attr]
    nfd = unicodedata.normalize("NFD", "각" * 3000)
    prompt = qwen.prompts(nfd)
    assert -(-len(nfd.encode()) // most) > qwen.count(prompt) >= qwen.floor(prompt)


def _naive(tok: Tokenizer) -> int:
    return max(len(v.encode()) for v in tok.get_vocab(with_added_tokens=True))


def _count(tok: Tokenizer, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


def test_tokenizers_that_drop_or_fuse_text_get_no_floor() -> None:
    """Where the longest token could not bound a token's text, no floor (0): counted."""
    # WordPiece (BERT): whitespace is not a token, and a word past 100 characters is one [UNK]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    wordpiece.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=500, special_tokens=["[UNK]"], show_progress=False))
    # a regex replace: a run of spaces made one (SentencePiece's remove_extra_whitespaces)
    collapsing = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    collapsing.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    collapsing.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<unk>", *BYTES], show_progress=False))
    # unknown characters fused into one token (no byte fallback)
    fused = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    fused.train_from_iterator(["abc def"], trainers.BpeTrainer(
        vocab_size=50, special_tokens=["<unk>"], show_progress=False))
    # an added token that swallows the whitespace before it (RoBERTa's <mask>)
    stripping = Tokenizer(models.BPE())
    stripping.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    stripping.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    stripping.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    cases = [(wordpiece, "a" + " " * 20_000 + "b"), (wordpiece, "x" * 5000),
             (collapsing, "a" + " " * 20_000 + "b"), (fused, "ж" * 5000),
             (stripping, " " * 20_000 + "<mask>")]
    for tok, text in cases:
        assert token_bytes(_fast(tok, CHATML)) is None
        assert len(text.encode()) // _naive(tok) > _count(tok, text)  # the naive floor breaks
        tokens = ModelTokens(_fast(tok, CHATML))
        assert tokens.floor(tokens.prompts(text)) == 0


def test_a_slow_or_unknown_tokenizer_has_no_floor() -> None:
    class Slow:
        chat_template = None

    assert token_bytes(Slow()) is None and ModelTokens(Slow()).token_bytes is None
