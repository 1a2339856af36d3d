import pytest

from sluice.errors import InvalidRequest
from sluice.pipeline.request import RequestLimits, decode_json, parse_request, with_usage_event

LIMITS = RequestLimits(max_n=8, max_tokens=4096)
CHAT = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}


def _param_of(body: dict, endpoint: str = "chat") -> str | None:
    with pytest.raises(InvalidRequest) as info:
        parse_request(endpoint, body, LIMITS)  # type: ignore[arg-type]
    assert info.value.status == 400
    return info.value.param


def test_valid_chat_request_parses_to_engine_type() -> None:
    req = parse_request("chat", CHAT | {"max_tokens": 5, "stream": True}, LIMITS)
    assert req.model == "small" and req.stream is True
    assert req.messages[0]["content"] == "hi"


def test_valid_completion_request() -> None:
    req = parse_request("completions", {"model": "large", "prompt": "x", "n": 2}, LIMITS)
    assert req.n == 2


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_tokens": 10**9}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"stream": "yes please"}, "stream"),
        ({"messages": "hi"}, "messages"),
        ({"messages": []}, "messages"),
        ({"model": 3}, "model"),
    ],
)
def test_bad_fields_are_named(extra: dict, param: str) -> None:
    assert _param_of(CHAT | extra) == param


def test_wrong_type_nested_in_messages_names_the_path() -> None:
    param = _param_of(CHAT | {"messages": [{"role": "user", "content": 5}]})
    assert param is not None and param.startswith("messages[0]")


def test_missing_prompt_for_completions() -> None:
    assert _param_of({"model": "small"}, "completions") == "prompt"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_bodies_that_are_not_json_objects(raw: bytes) -> None:
    with pytest.raises(InvalidRequest):
        decode_json(raw)


def test_every_stream_asks_the_engine_for_usage_and_says_if_the_client_did() -> None:
    plain = parse_request("chat", CHAT | {"stream": True}, LIMITS)
    assert with_usage_event(plain) is False and plain.stream_options.include_usage is True
    asked = parse_request("chat", CHAT | {"stream": True, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}}, LIMITS)
    assert with_usage_event(asked) is True and asked.stream_options.continuous_usage_stats
    whole = parse_request("completions", {"model": "small", "prompt": "x"}, LIMITS)
    assert with_usage_event(whole) is True and whole.stream_options is None


def test_a_deeply_nested_body_is_a_client_error() -> None:
    from sluice.pipeline.request import decode_json

    raw = b'{"model": "small", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        decode_json(raw)


def test_vllms_own_request_checks_are_client_errors_naming_the_field() -> None:
    body = {"model": "small", "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": True}}  # without stream: true
    with pytest.raises(InvalidRequest) as caught:
        parse_request("chat", body, LIMITS)
    assert caught.value.status == 400 and caught.value.param == "stream_options"
    assert "stream" in caught.value.message


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_an_oversized_body_is_413_before_it_is_read() -> None:
    import asyncio

    from sluice.errors import PayloadTooLarge
    from sluice.pipeline.request import read_body

    read: list[bytes] = []

    async def tracked():
        async for part in _chunks(b"x" * 10):
            read.append(part)
            yield part

    with pytest.raises(PayloadTooLarge) as caught:  # declared too large: nothing read
        asyncio.run(read_body(tracked(), str(20 * 1024 * 1024), 8 * 1024 * 1024))
    assert caught.value.status == 413 and caught.value.code == "request_too_large"
    assert read == []
    with pytest.raises(PayloadTooLarge):  # chunked, no length: refused as it streams in
        asyncio.run(read_body(_chunks(b"a" * 600, b"b" * 600), None, 1024))
    assert asyncio.run(read_body(_chunks(b'{"a":', b"1}"), "6", 1024)) == b'{"a":1}'


def test_a_body_that_never_finishes_is_408_within_the_timeout() -> None:
    import asyncio
    import time

    from sluice.errors import BodyTimeout
    from sluice.pipeline.request import read_body

    async def slow_loris():
        yield b'{"model": "small", '
        await asyncio.sleep(3600)  # the rest never comes
        yield b"}"

    started = time.monotonic()
    with pytest.raises(BodyTimeout) as caught:
        asyncio.run(read_body(slow_loris(), None, 1024, timeout_s=0.2))
    assert caught.value.status == 408 and caught.value.code == "request_timeout"
    assert time.monotonic() - started < 2
