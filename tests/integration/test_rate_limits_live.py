"""Rate limits on the live stack, counted in its real Redis: a key past its requests per
minute gets 429 with Retry-After and OpenAI's x-ratelimit headers (the official SDK sees a
RateLimitError); accepted answers carry the remaining quota; another key of the same
tenant has its own request counter but shares the tenant's token counter."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import HTTP_PORT, LIMITED_RPM, LIMITED_TENANT_TPM

BASE = f"http://127.0.0.1:{HTTP_PORT}"
BODY = {"model": "small", "prompt": "Count: 1, 2, 3,", "max_tokens": 4, "temperature": 0}


def _post(key: str) -> httpx.Response:
    return httpx.post(f"{BASE}/v1/completions", json=BODY, timeout=60,
                      headers={"authorization": f"Bearer {key}"})


def test_a_key_past_its_rpm_is_refused_with_openai_headers(stack) -> None:
    accepted = [_post("sk-test-limited") for _ in range(LIMITED_RPM)]
    assert [r.status_code for r in accepted] == [200] * LIMITED_RPM
    first, last = accepted[0].headers, accepted[-1].headers
    assert first["x-ratelimit-limit-requests"] == str(LIMITED_RPM)
    assert int(first["x-ratelimit-remaining-requests"]) == LIMITED_RPM - 1
    assert last["x-ratelimit-remaining-requests"] == "0"
    assert first["x-ratelimit-limit-tokens"] == str(LIMITED_TENANT_TPM)
    refused = _post("sk-test-limited")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")

    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key="sk-test-limited", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(**BODY)

    # the tenant's other key: its own request counter, the tenant's token counter
    other = _post("sk-test-limited-2")
    assert other.status_code == 200
    assert other.headers["x-ratelimit-remaining-requests"] == str(LIMITED_RPM - 1)
    used = LIMITED_TENANT_TPM - int(other.headers["x-ratelimit-remaining-tokens"])
    assert used > 0  # the first key's corrected reservations and this one's


def test_keys_without_a_limit_carry_no_rate_headers(stack) -> None:
    response = _post("sk-test-team-a")
    assert response.status_code == 200
    assert not any(h.startswith("x-ratelimit-") for h in response.headers)
