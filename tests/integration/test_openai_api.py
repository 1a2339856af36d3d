"""The OpenAI-compatible API, driven by the official `openai` client against the real stack."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "Say something about rivers."}]


@pytest.mark.parametrize("model", ["small", "large"])
def test_chat_non_streaming(oai, model: str) -> None:
    raw = oai.chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=6)
    resp = raw.parse()
    assert raw.headers["x-sluice-model"] == model
    assert raw.headers["x-sluice-route"] == model
    assert resp.model == model
    assert resp.usage.completion_tokens == 6 and resp.usage.prompt_tokens > 0
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", ["small", "large"])
def test_chat_streaming_with_usage(oai, model: str) -> None:
    stream = oai.chat.completions.create(
        model=model, messages=MSG, max_tokens=5, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert text_chunks, "no content streamed"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert all(c.model == model for c in chunks)


def test_streaming_without_usage_has_no_usage_chunk(oai) -> None:
    chunks = list(oai.chat.completions.create(model="small", messages=MSG, max_tokens=3,
                                              stream=True))
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("model", ["small", "large"])
def test_completions_non_streaming(oai, model: str) -> None:
    resp = oai.completions.create(model=model, prompt="Once upon a time", max_tokens=4)
    assert resp.model == model and resp.usage.completion_tokens == 4
    assert isinstance(resp.choices[0].text, str)


def test_completions_streaming(oai) -> None:
    chunks = list(oai.completions.create(model="large", prompt="Hello", max_tokens=4,
                                         stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 4
    assert sum(1 for c in chunks if c.choices) >= 1


def test_n_choices(oai) -> None:
    resp = oai.chat.completions.create(model="small", messages=MSG, max_tokens=3, n=2)
    assert len(resp.choices) == 2


def test_greedy_is_deterministic(oai) -> None:
    a, b = (oai.chat.completions.create(model="small", messages=MSG, max_tokens=8,
                                        temperature=0).choices[0].message.content
            for _ in range(2))
    assert a == b


def test_auto_is_answered_through_the_cascade(oai) -> None:
    raw = oai.chat.completions.with_raw_response.create(model="auto", messages=MSG, max_tokens=2)
    assert raw.headers["x-sluice-route"] in {"small", "large", "small>large"}
    assert raw.headers["x-sluice-model"] == raw.parse().model


def test_async_client_concurrent_streams(aoai) -> None:
    async def one(i: int) -> int:
        stream = await aoai.chat.completions.create(
            model="small" if i % 2 else "large", messages=MSG, max_tokens=4, stream=True,
            stream_options={"include_usage": True})
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        return usage.completion_tokens

    async def main() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(6)))

    assert asyncio.run(main()) == [4] * 6


def test_models_list(oai) -> None:
    models = {m.id: m for m in oai.models.list().data}
    assert {"small", "large", "auto"} <= set(models)  # plus the test profile's routes
    assert oai.models.retrieve("large").id == "large"


def test_models_metadata_says_demo_output_is_noise(http) -> None:
    data = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert "noise" in data["small"]["metadata"]["note"]
    assert data["large"]["metadata"]["context_length"] == 8192


def test_usage_reports_cached_prompt_tokens(oai) -> None:
    """A repeated long prompt reuses the engine's prefix cache, and usage says how much."""
    prompt = "The river runs past the mill and the weir and the long low bridge. " * 20
    kwargs = {"model": "small", "prompt": prompt, "max_tokens": 2, "temperature": 0.7,
              "extra_headers": {"cache-control": "no-store"}}  # not the response cache
    first = oai.completions.create(**kwargs)
    second = oai.completions.create(**kwargs)
    assert first.usage.prompt_tokens > 256
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= 128  # one CPU KV block or more
