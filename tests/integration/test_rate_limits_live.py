"""Rate limits on the live stack, counted in its real Redis: a key past its requests per
minute gets 429 with Retry-After and OpenAI's x-ratelimit headers (the official SDK sees a
RateLimitError); accepted answers carry the remaining quota; another key of the same
tenant has its own request counter but shares the tenant's token counter."""

from __future__ import annotations

import httpx
import openai
import pytest

BODY = {"model": "small", "prompt": "Count: 1, 2, 3,", "max_tokens": 4, "temperature": 0}


def _limit(stack, scope: str, ident: str, field: str) -> int:
    limits = stack.config.profile.accounting.rate_limits.limits
    return next(getattr(x, field) for x in limits if (x.scope, x.id) == (scope, ident))


def test_a_key_past_its_rpm_is_refused_with_openai_headers(stack, http, base_url) -> None:
    def _post(key: str) -> httpx.Response:
        return http.post("/v1/completions", json=BODY,
                         headers={"authorization": f"Bearer {key}"})

    rpm = _limit(stack, "key", "limited-app", "requests_per_minute")
    tenant_tpm = _limit(stack, "tenant", "t-limited", "tokens_per_minute")
    accepted = [_post("sk-test-limited") for _ in range(rpm)]
    assert [r.status_code for r in accepted] == [200] * rpm
    first, last = accepted[0].headers, accepted[-1].headers
    assert first["x-ratelimit-limit-requests"] == str(rpm)
    assert int(first["x-ratelimit-remaining-requests"]) == rpm - 1
    assert last["x-ratelimit-remaining-requests"] == "0"
    assert first["x-ratelimit-limit-tokens"] == str(tenant_tpm)
    refused = _post("sk-test-limited")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
    # the tokens trio too (the tenant's tokens-per-minute limit counts this key)
    assert refused.headers["x-ratelimit-limit-tokens"] == str(tenant_tpm)
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) < tenant_tpm
    assert refused.headers["x-ratelimit-reset-tokens"].endswith("s")

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-test-limited",
                           max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(**BODY)

    # the tenant's other key: its own request counter, the tenant's token counter
    other = _post("sk-test-limited-2")
    assert other.status_code == 200
    assert other.headers["x-ratelimit-remaining-requests"] == str(rpm - 1)
    used = tenant_tpm - int(other.headers["x-ratelimit-remaining-tokens"])
    assert used > 0  # the first key's corrected reservations and this one's


def test_keys_without_a_limit_carry_no_rate_headers(http) -> None:
    response = http.post("/v1/completions", json=BODY,
                         headers={"authorization": "Bearer sk-test-team-a"})
    assert response.status_code == 200
    assert not any(h.startswith("x-ratelimit-") for h in response.headers)
