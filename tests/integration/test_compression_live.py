"""Prompt compression on the real stack (#20): a chat with a long document (real SQuAD text)
asked with `x-sluice-compress` reaches the engine shorter, the note's token counts are the
engine's own `prompt_tokens`, the question and the code block arrive untouched, a stream says
the same, and the ledger (`/v1/usage`) shows the tokens saved and their price."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

from loadtests.compression_data import load

pytestmark = pytest.mark.integration
URL = "/v1/chat/completions"
NOTE = re.compile(r"^(\d+)->(\d+) tokens$")


def _chat(qa, stream: bool = False) -> dict:
    body = {"model": "large", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": "Answer from the document."},
                         {"role": "user", "content": f"{qa.context}\n\n```\nkeep(code)\n```"},
                         {"role": "assistant", "content": "Ask."},
                         {"role": "user", "content": qa.question}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def test_a_compressed_chat_reaches_the_engine_shorter_and_says_so(http) -> None:
    qa = load()[3]
    tag = f"compress-{uuid.uuid4().hex[:8]}"
    start = time.time() - 1
    no_cache = {"cache-control": "no-store", "x-sluice-tags": tag}
    full = http.post(URL, json=_chat(qa), headers=no_cache)
    assert full.status_code == 200 and "x-sluice-compression" not in full.headers
    whole = full.json()["usage"]["prompt_tokens"]

    short = http.post(URL, json=_chat(qa), headers={**no_cache,
                                                    "x-sluice-compress": "ratio=0.5"})
    assert short.status_code == 200, short.text
    before, after = map(int, NOTE.match(short.headers["x-sluice-compression"]).groups())
    assert before == whole  # counted as the engine counts: the full prompt
    assert after == short.json()["usage"]["prompt_tokens"]  # and what it received
    assert after < 0.7 * before

    streamed = http.post(URL, json=_chat(qa, stream=True),
                         headers={**no_cache, "x-sluice-compress": "ratio=0.5"})
    assert streamed.status_code == 200
    assert streamed.headers["x-sluice-compression"] == short.headers["x-sluice-compression"]
    lines = [ln for ln in streamed.text.splitlines() if ln.startswith("data: {")]
    assert json.loads(lines[-1][6:])["usage"]["prompt_tokens"] == after

    deadline = time.monotonic() + 30
    while True:  # the ledger is written off the request path
        report = http.get("/v1/usage", params={"group_by": "tag", "start": start}).json()
        row = next((r for r in report["data"] if r["group"] == tag), None)
        if row is not None and row["requests"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert row is not None and row["requests"] == 3, report
    assert row["compressed_requests"] == 2
    assert row["saved_tokens"] == 2 * (before - after)
    # large's input price (the catalog's), on the tokens saved
    assert row["saved_usd"] == pytest.approx(2 * (before - after) * 0.50 / 1e6, rel=1e-6)


def test_short_prompts_and_bad_headers(http) -> None:
    body = {"model": "small", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hello there"}]}
    ok = http.post(URL, json=body, headers={"x-sluice-compress": "on"})
    assert ok.status_code == 200 and "x-sluice-compression" not in ok.headers
    bad = http.post(URL, json=body, headers={"x-sluice-compress": "ratio=1.5"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-sluice-compress"
