"""Bad input gets a clear OpenAI-style error with the right status; health endpoints."""

from __future__ import annotations

import socket

import openai
import pytest

pytestmark = pytest.mark.integration
MSG = [{"role": "user", "content": "hi"}]


def _assert_error(resp, status: int, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    assert resp.headers.get("x-request-id")
    return err


def test_unknown_model_is_404(http, oai) -> None:
    err = _assert_error(http.post("/v1/chat/completions",
                                  json={"model": "gpt-7", "messages": MSG}), 404, "model")
    assert err["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-7", messages=MSG)
    assert http.get("/v1/models/gpt-7").status_code == 404


def test_malformed_json_is_400(http) -> None:
    resp = http.post("/v1/chat/completions", content=b'{"model": "small", ',
                     headers={"content-type": "application/json"})
    assert "JSON" in _assert_error(resp, 400)["message"]


def test_hostile_bodies_are_client_errors_not_server_errors(http) -> None:
    deep = b'{"model": "small", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    resp = http.post("/v1/chat/completions", content=deep,
                     headers={"content-type": "application/json"})
    assert "nested too deeply" in _assert_error(resp, 400)["message"]
    resp = http.post("/v1/chat/completions", json={
        "model": "small", "messages": MSG, "stream_options": {"include_usage": True}})
    _assert_error(resp, 400, "stream_options")
    long_id = "r" * 5000  # not carried into the answer's id (nor the ledger, nor logs)
    resp = http.post("/v1/chat/completions", headers={"x-request-id": long_id},
                     json={"model": "small", "messages": MSG, "max_tokens": 2})
    assert resp.status_code == 200 and long_id not in resp.json()["id"]
    # 20 MB declared, a few bytes sent: the answer comes before the body is read
    host, port = http.base_url.host, http.base_url.port
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 20971520\r\n\r\n{\"model\"")
        answer = b""
        while b"\r\n\r\n" not in answer or b"request_too_large" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"request_too_large" in answer


def test_a_body_that_never_finishes_is_408_not_a_hang(stack, http) -> None:
    """A slow-loris client: headers and a part of the body, then nothing."""
    import time

    host, port = http.base_url.host, http.base_url.port
    limit = stack.config.profile.ingress.body_timeout_s
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=limit + 30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
        answer = b""
        while b"request_timeout" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert limit <= time.monotonic() - started < limit + 20


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"max_tokens": 0}, "max_tokens"), ({"n": 500}, "n"), ({"temperature": -1}, "temperature"),
     ({"max_tokens": "many"}, "max_tokens"), ({"messages": "hi"}, "messages")],
)
def test_bad_fields_are_400_naming_the_field(http, extra: dict, param: str) -> None:
    body = {"model": "small", "messages": MSG} | extra
    _assert_error(http.post("/v1/chat/completions", json=body), 400, param)


def test_prompt_longer_than_context_is_400_with_both_numbers(http) -> None:
    long_prompt = "river " * 3000  # well over the small model's 2048-token context
    resp = http.post("/v1/completions",
                     json={"model": "small", "prompt": long_prompt, "max_tokens": 4})
    err = _assert_error(resp, 400, "prompt")
    assert err["code"] == "context_length_exceeded"
    assert "2048" in err["message"], err["message"]
    assert any(ch.isdigit() for ch in err["message"].replace("2048", ""))
    # and a streaming request gets the same 400, not a broken stream
    resp = http.post("/v1/completions", json={"model": "small", "prompt": long_prompt,
                                              "max_tokens": 4, "stream": True})
    _assert_error(resp, 400, "prompt")
    resp = http.post("/v1/chat/completions", json={
        "model": "small", "messages": [{"role": "user", "content": long_prompt}]})
    assert _assert_error(resp, 400, "messages")["code"] == "context_length_exceeded"


def test_request_id_is_echoed_or_minted(http) -> None:
    body = {"model": "small", "messages": MSG, "max_tokens": 2}
    resp = http.post("/v1/chat/completions", json=body, headers={"x-request-id": "client-42"})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "client-42"
    resp = http.post("/v1/chat/completions", json=body)
    minted = resp.headers["x-request-id"]
    assert minted and minted != "client-42"
    err = http.post("/v1/chat/completions", json={"model": "nope", "messages": MSG},
                    headers={"x-request-id": "client-43"})
    assert err.headers["x-request-id"] == "client-43"


def test_unknown_route_is_openai_shaped_404(http) -> None:
    _assert_error(http.get("/v1/nothing-here"), 404)


def test_health_and_readiness(http) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["models"] == {"small": "ready", "large": "ready"}
