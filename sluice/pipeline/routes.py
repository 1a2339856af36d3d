"""Build each cascade route's runner from the validated routing config.

Loads fitted artifacts (hash-checked), the embedding model (once, only when a learned stage
needs it) and, for an LLM judge, the judge model's label token ids; wires the engine calls.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from collections.abc import Callable

from opentelemetry.trace import Tracer
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from sluice.accounting.stage_spend import StageLog
from sluice.control_tokens import control_tokens_of
from sluice.pipeline.cascade_runner import CascadeRunner, EngineCaller, Spawn
from sluice.router.artifacts import load_scorer
from sluice.router.cascade import CascadePolicy
from sluice.router.features import Embedder
from sluice.router.judges import (
    Grader,
    Judge,
    JudgeError,
    LearnedPromptRouter,
    LLMJudge,
    LogprobJudge,
    ScorerJudge,
)
from sluice.schema.platform import PlatformConfig
from sluice.schema.routing import JudgeConfig, RoutingConfig

LABELS = ("Yes", "No")


def _label_tokens(config: PlatformConfig, model: str) -> tuple[list[int], list[str]]:
    """First token id and its decoded text for each label, in the judge model's vocabulary."""
    from transformers import AutoTokenizer

    source = config.model_source(config.catalog.get(model))
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = [tokenizer.encode(label, add_special_tokens=False)[0] for label in LABELS]
    if ids[0] == ids[1]:
        raise ValueError(f"judge model '{model}': 'Yes' and 'No' start with the same token")
    return ids, [str(tokenizer.decode([i])) for i in ids]


def llm_grader(config: PlatformConfig, model: str, engines: EngineCaller) -> Grader:
    """Ask the judge model for one token and read log P(Yes), log P(No) from vLLM.

    vLLM's `logprob_token_ids` returns the two labels' log-probabilities whether or not
    they are among the top tokens. The graded answer is model output, which can spell a
    control token in plain tokens: it is made plain text like a client's message.
    """
    ids, texts = _label_tokens(config, model)
    control = control_tokens_of([config.model_source(config.catalog.get(model))])

    async def grade(messages: list[dict[str, str]], spend: StageLog | None
                    ) -> tuple[float, float]:
        messages = [{**m, "content": control.plain_text(m["content"])} for m in messages]
        request = ChatCompletionRequest.model_validate({
            "model": model, "messages": messages, "max_tokens": 1, "temperature": 0,
            "logprobs": True, "top_logprobs": len(ids), "logprob_token_ids": ids})
        stream = await engines.call(model, "chat", request)
        response = stream.whole()
        if spend is not None:
            spend.record("judge", model, response)
        content = ((response["choices"][0].get("logprobs") or {}).get("content") or [])
        if not content:
            raise JudgeError("the judge model returned no log-probabilities")
        found = {t["token"]: t["logprob"] for t in content[0].get("top_logprobs") or []}
        return (found.get(texts[0], -math.inf), found.get(texts[1], -math.inf))

    return grade


def _judge(config: PlatformConfig, routing: RoutingConfig, judge: JudgeConfig,
           embedder: Callable[[], Embedder], engines: EngineCaller) -> Judge:
    if judge.kind == "logprob":
        return LogprobJudge(judge.reduce)
    if judge.kind == "llm":
        assert judge.judge_model is not None
        return LLMJudge(llm_grader(config, judge.judge_model, engines))
    assert judge.artifact is not None
    scorer = load_scorer(judge.kind, routing.artifact_path(judge.artifact),
                         judge.artifact.sha256, embedder())
    return ScorerJudge(judge.kind, scorer)


def lazy_embedder() -> Callable[[], Embedder]:
    """The MiniLM embedder, loaded on first use and then shared (learned stages, the
    semantic cache, compression); loaded once even when two threads ask first."""
    lock = threading.Lock()

    @functools.cache
    def load() -> Embedder:
        from sluice.router.features import MiniLMEmbedder

        return MiniLMEmbedder(batch_size=8)

    def embedder() -> Embedder:
        with lock:
            return load()

    return embedder


def build_runners(config: PlatformConfig, engines: EngineCaller, spawn: Spawn,
                  embedder: Callable[[], Embedder], rng: random.Random | None = None,
                  tracer: Tracer | None = None) -> dict[str, CascadeRunner]:
    routing = config.routing
    if routing is None:
        return {}
    runners = {}
    for route in routing.routes:
        pre_router = None
        if route.pre_router is not None:
            artifact = route.pre_router.artifact
            scorer = load_scorer("learned-prompt", routing.artifact_path(artifact),
                                 artifact.sha256, embedder())
            scorer.score_texts(["warm-up"])  # the first inference is slow: not on a request
            pre_router = LearnedPromptRouter(scorer)
        judge = (_judge(config, routing, route.judge, embedder, engines)
                 if route.judge is not None else None)
        policy = CascadePolicy(route, rng or random.Random())
        runners[route.name] = CascadeRunner(policy, engines, spawn, pre_router, judge, tracer)
    return runners
