"""Prompt compression: what is a unit and what is protected, the selection methods (pure, with
a word-count embedder), the compressor on real text (SQuAD v1.1 dev with the real MiniLM),
and the request-path stage (the header, what it touches, the counts it reports)."""

from __future__ import annotations

import asyncio
import functools
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from loadtests.compression_data import load
from sluice.compression.compressor import compress
from sluice.compression.methods import random_drop, relevance, salience, truncate
from sluice.compression.units import join_units, sentences, split_units
from sluice.errors import InvalidRequest
from sluice.pipeline.compress_stage import PATTERN, CompressStage, parse_header
from sluice.pipeline.request import ParsedRequest
from sluice.pipeline.token_counter import TokenCounter
from sluice.router.features import Embedder, MemoEmbedder
from sluice.router.static import StaticRouter
from sluice.schema.compression import CompressionPolicy, CompressionSettings
from sluice.schema.loading import load_platform_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)


class WordEmbedder:
    """Bag of words over a fixed vocabulary: similar texts share words (pure, fast)."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vocab = sorted({w for t in texts for w in re.findall(r"\w+", t.lower())})
        index = {w: i for i, w in enumerate(vocab)}
        out = np.zeros((len(texts), max(1, len(vocab))))
        for row, text in enumerate(texts):
            for w in re.findall(r"\w+", text.lower()):
                out[row, index[w]] += 1
        return out


def test_code_tables_and_structured_data_are_protected_prose_is_split() -> None:
    text = ("The mill was built in 1820. It burned down in 1871. Dr. Smith rebuilt it.\n\n"
            "```python\nprint('keep me')\n```\n\n"
            "| year | event |\n|---|---|\n| 1820 | built |\n\n"
            '{"mill": {"built": 1820}}\n\n'
            "a,b,c\n1,2,3\n4,5,6\n\n"
            "    indented code line\n\n"
            "The end is near! Is it? Yes.")
    units = split_units(text)
    protected = [u.text for u in units if u.protected]
    assert protected == ["```python\nprint('keep me')\n```",
                         "| year | event |\n|---|---|\n| 1820 | built |",
                         '{"mill": {"built": 1820}}', "a,b,c\n1,2,3\n4,5,6",
                         "    indented code line"]
    prose = [u.text for u in units if not u.protected]
    assert prose == ["The mill was built in 1820.", "It burned down in 1871.",
                     "Dr. Smith rebuilt it.", "The end is near!", "Is it?", "Yes."]
    assert join_units(units, [True] * len(units)).count("\n\n") == 6
    assert sentences("Born in the U.S. Army base. Then left.") == [
        "Born in the U.S. Army base.", "Then left."]


def test_methods_keep_within_budget_in_order_and_relevance_avoids_repeats() -> None:
    units = ["The weir holds the river.", "A water wheel grinds grain at the mill.",
             "The mill grinds grain with water power.", "The mill grinds grain with water power!",
             "Lanterns light the market."]
    lengths = [5, 8, 7, 7, 4]
    question = "What grinds grain with water?"
    keep = relevance(WordEmbedder(), diversity=0.5)(units, question, lengths, 15)
    assert sum(n for n, k in zip(lengths, keep) if k) <= 15
    assert keep[1] and (keep[2] or keep[3])
    assert not (keep[2] and keep[3]), "a near-copy of a kept sentence is redundant"
    assert salience(WordEmbedder())(units, question, lengths, 7).count(True) == 1
    assert truncate(units, question, lengths, 13) == [True, True, False, False, False]
    drop = random_drop(3)(units, question, lengths, 12)
    assert drop == random_drop(3)(units, question, lengths, 12)  # seeded
    assert sum(n for n, k in zip(lengths, drop) if k) <= 12


def test_compress_pools_messages_keeps_protected_units_and_their_order() -> None:
    doc = ("Alpha is first. Beta is second. Gamma is third. Delta is fourth.\n\n"
           "```\nx = 1\n```")
    turn = "Epsilon is fifth. Zeta is sixth."
    out = compress([doc, turn], "Which is third?", 0.4, relevance(WordEmbedder()),
                   lambda s: len(s.split()))
    assert "```\nx = 1\n```" in out[0] and "Gamma is third." in out[0]
    kept = [s for s in ("Alpha", "Beta", "Gamma", "Delta") if s in out[0]]
    assert kept == sorted(kept, key=doc.index)  # original order
    assert len(" ".join(out).split()) < len(f"{doc} {turn}".split())
    assert compress(["One sentence only."], "q", 0.5, truncate, len) == ["One sentence only."]
    lead = "Answer from this document only.\n\n" + doc.split("\n\n")[0]
    words = lambda s: len(s.split())
    pick = relevance(WordEmbedder())
    assert compress([lead], "Which is third?", 0.3, pick, words)[0] == "Gamma is third."
    kept = compress([lead], "Which is third?", 0.3, pick, words, lead_tokens=8)[0]
    assert kept.startswith("Answer from this document only.\n\n")  # the instruction stays


def test_the_compressor_keeps_the_answer_on_real_squad_text() -> None:
    """SQuAD v1.1 dev, contexts of 700+ words, the real MiniLM, the demo tokenizer: at half the
    tokens, `relevance` keeps the gold answer for nearly every question and far more often
    than dropping sentences at random (BENCHMARKS.md has the full run)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ROOT / "models/demo/small"))

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    items = random.Random(0).sample(load(), 40)
    embedder = MemoEmbedder(_minilm())  # each sentence embedded once for both methods
    scores = {}
    for name, select in (("relevance", relevance(embedder)), ("salience", salience(embedder)),
                         ("random", random_drop(0))):
        kept = [compress([qa.context], qa.question, 0.5, select, length)[0] for qa in items]
        scores[name] = sum(qa.survives(k) for qa, k in zip(items, kept)) / len(items)
        share = sum(length(k) for k in kept) / sum(length(qa.context) for qa in items)
        assert 0.4 < share <= 0.5
    assert scores["relevance"] >= 0.9, scores
    assert scores["salience"] >= 0.8, scores
    assert scores["relevance"] >= scores["random"] + 0.25, scores


@pytest.mark.parametrize(("value", "expected"), [
    ("on", {"enabled": True}), ("off", {"enabled": False}),
    ("ratio=0.5", {"enabled": True, "ratio": 0.5}),
    ("method=salience; ratio=.3", {"enabled": True, "ratio": 0.3, "method": "salience"}),
    ("ratio=0.7;method=relevance", {"enabled": True, "ratio": 0.7}),
])
def test_the_header_asks_for_compression(value: str, expected: dict[str, object]) -> None:
    base = CompressionPolicy()
    assert parse_header(value, base) == base.model_copy(update=expected)
    assert re.fullmatch(PATTERN, value)  # what the API document states, it takes


@pytest.mark.parametrize("value", ["ratio=1", "ratio=0", "ratio=0.0", "ratio=x",
                                   "method=llmlingua", "level=3", "ratio=0.5;", "yes", "",
                                   "RATIO=0.7", "ratio=0.5,method=salience", "ratio = 0.5",
                                   "ratio=1e-1", "ON"])
def test_a_bad_header_is_a_400_naming_it(value: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_header(value, CompressionPolicy())
    assert err.value.param == "x-sluice-compress"
    assert not re.fullmatch(PATTERN, value)


@functools.cache
def _minilm() -> Embedder:
    from sluice.router.features import MiniLMEmbedder

    return MiniLMEmbedder()


def _stage(settings: CompressionSettings) -> tuple[CompressStage, list[tuple[str, str, int]]]:
    recorded: list[tuple[str, str, int]] = []
    counter = TokenCounter({m.name: CONFIG.model_source(m) for m in CONFIG.catalog.local})
    router = StaticRouter(CONFIG.catalog, CONFIG.profile.ingress.auto_route)
    stage = CompressStage(settings, router, counter, _minilm,
                          lambda model, p, c: p * 1e-6, lambda *a: recorded.append(a))
    return stage, recorded


def _chat(messages: list[dict[str, str]], headers: dict[str, str], model: str = "small"
          ) -> ParsedRequest:
    body = {"model": model, "messages": messages, "max_tokens": 8}
    return ParsedRequest("chat", body, ChatCompletionRequest.model_validate(body), "r1",
                         headers)


def test_the_stage_compresses_the_context_not_the_question_and_counts_it() -> None:
    qa = load()[0]
    stage, recorded = _stage(CompressionSettings())
    instruction = "Answer in one word."
    doc = f"{qa.context}\n\n```\nkeep(this, code)\n```"
    messages = [{"role": "system", "content": instruction},
                {"role": "user", "content": f"Use this report.\n\n{doc}"},
                {"role": "assistant", "content": "Ready."},
                {"role": "user", "content": qa.question}]
    plain = _chat(messages, {})
    assert asyncio.run(stage.apply(plain)) is None  # off unless asked
    request = _chat(messages, {"x-sluice-compress": "ratio=0.5"})
    done = asyncio.run(stage.apply(request))
    assert done is not None and done.method == "relevance"
    sent = request.llm.messages
    assert sent[0]["content"] == instruction and sent[3]["content"] == qa.question
    assert sent[2]["content"] == "Ready."
    assert "```\nkeep(this, code)\n```" in sent[1]["content"]
    assert sent[1]["content"].startswith("Use this report.\n\n")  # its short lead, kept
    assert len(sent[1]["content"]) < 0.65 * len(doc)
    counter = TokenCounter({"small": CONFIG.model_source(CONFIG.catalog.get("small"))})
    assert done.before == counter.count_now("small", plain.llm)
    assert done.after == counter.count_now("small", request.llm)
    assert done.note == f"{done.before}->{done.after} tokens" and done.saved_tokens > 300
    assert done.saved_usd == pytest.approx(done.saved_tokens * 1e-6)
    assert recorded == [] and done.model == "small"  # counted once an engine answered
    stage.counted(done)
    assert recorded == [("small", "relevance", done.saved_tokens)]
    assert request.body["messages"][1]["content"].endswith(doc)  # the body as sent
    assert request.cache_scope == "~compressed:relevance:0.5"


def test_the_stage_leaves_short_prompts_completions_and_opted_out_requests_alone() -> None:
    qa = load()[0]
    on = CompressionSettings(default=CompressionPolicy(enabled=True))
    stage, _ = _stage(on)
    long_chat = [{"role": "system", "content": qa.context},
                 {"role": "user", "content": qa.question}]
    assert asyncio.run(stage.apply(_chat(long_chat, {"x-sluice-compress": "off"}))) is None
    assert asyncio.run(stage.apply(_chat(long_chat, {}))) is not None  # the model's policy
    short = [{"role": "system", "content": qa.paragraph},
             {"role": "user", "content": qa.question}]
    assert asyncio.run(stage.apply(_chat(short, {}))) is None  # under min_prompt_tokens
    body = {"model": "small", "prompt": qa.context, "max_tokens": 8}
    completion = ParsedRequest("completion", body, CompletionRequest.model_validate(body),
                               "r2", {"x-sluice-compress": "on"})
    assert asyncio.run(stage.apply(completion)) is None
    pictured = [{"role": "user", "content": [
                    {"type": "text", "text": qa.context},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "user", "content": qa.question}]
    text_only = [{**pictured[0], "content": pictured[0]["content"][:1]}, pictured[1]]
    assert asyncio.run(stage.apply(_chat(text_only, {"x-sluice-compress": "on"}))) is not None
    asked = _chat(pictured, {"x-sluice-compress": "on"})
    assert asyncio.run(stage.apply(asked)) is None  # not text only: never touched
    assert asked.llm.messages[0]["content"][1]["type"] == "image_url"
    untokenized = CompressStage(on, StaticRouter(CONFIG.catalog, "large"), TokenCounter({}),
                                lambda: WordEmbedder(), lambda *a: 0.0, lambda *a: None)
    assert asyncio.run(untokenized.apply(_chat(long_chat, {}))) is None  # (a hosted model)
    no_choice, _ = _stage(CompressionSettings(client_choice=False))
    assert asyncio.run(no_choice.apply(_chat(long_chat, {"x-sluice-compress": "on"}))) is None
    with pytest.raises(InvalidRequest):
        asyncio.run(stage.apply(_chat(long_chat, {"x-sluice-compress": "ratio=2"})))


def test_a_profile_names_only_served_models_for_compression() -> None:
    import pydantic

    from sluice.schema.platform import PlatformConfig

    for models, ok in (({"large": {"enabled": True}, "auto": {}}, True),
                       ({"medium": {"enabled": True}}, False)):
        profile = CONFIG.profile.model_copy(
            update={"compression": CompressionSettings.model_validate({"models": models})})
        data = CONFIG.model_copy(update={"profile": profile}).model_dump()
        if ok:
            PlatformConfig.model_validate(data)
        else:
            with pytest.raises(pydantic.ValidationError, match="compression.models: unknown"):
                PlatformConfig.model_validate(data)
