"""Limits, keys and admission control across two real ingress replicas.

Its own `sluice serve` (a subprocess, as the autoscaling test has): two ingress replicas
behind Serve's proxy (transport `proxy`), one `small` engine with a small bounded queue
(and a `large` no test uses), its own Redis holding the rate-limit counters, the key store,
the ledger and the replicas' scrape targets (`ingress.metrics_port: 0`). Every response
names the ingress replica that answered (`x-sluice-ingress`), so each test checks that both
replicas took part. Run order matters only for the last test, which saturates the engine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sluice.accounting.tenancy import key_hash
from sluice.observability.prometheus_server import LocalPrometheus
from sluice.observability.scrape_targets import JOB, PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
PORT, REDIS_PORT = 8795, 6404
ADMIN, LIMITED, OTHER = "sk-mi-admin", "sk-mi-limited", "sk-mi-other"
TOKENS = "sk-mi-tokens"
RPM = 6  # the limited key's requests per minute, over both replicas together
# the tokens key's tokens per minute: a request reserves its prompt and max_tokens, so a
# burst of them fits a few (each ~20 prompt tokens + TPM_MAX_TOKENS) and refuses the rest
TPM, TPM_MAX_TOKENS = 300, 48
REFRESH_S = 2.0  # accounting.auth.key_refresh_s: the bound a key change takes effect within
# small's engine replica holds MAX_ONGOING; each ingress replica queues MAX_QUEUED more: the
# RPM burst's accepted requests fit, with room, even if all land on one ingress replica
# (with MAX_QUEUED 4 they fitted exactly, and a slow CI runner once shed two of them as
# 503s); the last test's 24 concurrent requests are still more than both queues hold
MAX_ONGOING, MAX_QUEUED = 2, 8
MSG = [{"role": "user", "content": "hi"}]


def _profile(tmp: Path) -> Path:
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile.pop("routing", None)  # no cascade: `auto` is small
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    # metrics_port 0: each replica its own scrape target, on an ephemeral port
    profile["ingress"] = {**profile["ingress"], "transport": "proxy", "num_replicas": 2,
                          "metrics_port": 0}
    profile["dashboard"] = {"enabled": False}
    profile["semantic_cache"] = {"enabled": False}
    profile["models"] = {**profile["models"],
                         "small": {"min_replicas": 1, "max_replicas": 1,
                                   "max_ongoing_requests": MAX_ONGOING,
                                   "max_queued_requests": MAX_QUEUED}}
    keys = [{"id": "mi-admin", "tenant": "ops", "sha256": key_hash(ADMIN), "admin": True},
            {"id": "mi-limited", "tenant": "t-mi", "sha256": key_hash(LIMITED)},
            {"id": "mi-other", "tenant": "t-mi-other", "sha256": key_hash(OTHER)},
            {"id": "mi-tokens", "tenant": "t-mi-tokens", "sha256": key_hash(TOKENS)}]
    profile["accounting"] = {
        "auth": {"required": True, "keys": keys, "key_refresh_s": REFRESH_S},
        "rate_limits": {"limits": [{"scope": "key", "id": "mi-limited",
                                    "requests_per_minute": RPM},
                                   {"scope": "key", "id": "mi-tokens",
                                    "tokens_per_minute": TPM}],
                        "store_timeout_ms": 1000}}  # a loaded 2-core runner
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.fixture(scope="module")
def two_ingress(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("multi-ingress")
    log_path = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "serve", "--profile", str(_profile(tmp)),
             "--port", str(PORT), "--redis-port", str(REDIS_PORT), "--no-dashboard",
             "--run-dir", str(tmp / "run")],  # a Redis of its own, not .run's
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{PORT}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail("sluice serve exited:\n" + log_path.read_text()[-3000:])
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("not ready in 600 s:\n" + log_path.read_text()[-3000:])
            time.sleep(2)
        _both_replicas_up(url)
        _both_replicas_answer(url)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)


def _both_replicas_up(url: str) -> None:
    """Serve starts answering once one ingress replica runs; wait (bounded) for the second."""
    deadline = time.monotonic() + 300
    seen: set[str] = set()
    while len(seen) < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"only ingress replicas {seen} answered within 300 s")
        seen.add(httpx.get(f"{url}/healthz", timeout=10).headers["x-sluice-ingress"])


def _both_replicas_answer(url: str) -> None:
    """A replica that answers /healthz has not necessarily reached its engine yet: wait
    (bounded) until each has answered a chat (key OTHER: not the rate-limited one), so the
    tests measure limits and keys, not a replica's first seconds."""
    deadline = time.monotonic() + 300
    answered: set[str] = set()
    while len(answered) < 2:
        if time.monotonic() > deadline:
            pytest.fail(f"only ingress replicas {answered} answered a chat within 300 s")
        answered |= _replicas_of([r for r in _burst(url, OTHER, 4) if r.status_code == 200])


def _unexpected(responses: list[httpx.Response], expected: set[int]) -> list[str]:
    """What a test's assertion prints: each unexpected answer's status and error."""
    return [f"{r.status_code} {r.headers.get('x-sluice-ingress', '-')} {r.text[:200]}"
            for r in responses if r.status_code not in expected]


def _chat(url: str, secret: str, model: str = "small", max_tokens: int = 1,
          **extra: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=120,
                      headers={"authorization": f"Bearer {secret}"},
                      json={"model": model, "messages": MSG, "max_tokens": max_tokens,
                            **extra})


def _burst(url: str, secret: str, n: int, **kw: object) -> list[httpx.Response]:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: _chat(url, secret, **kw), range(n)))


def _everywhere(url: str, secret: str, n: int = 16) -> list[httpx.Response]:
    """n concurrent authenticated requests that run no engine (GET /v1/usage checks the key
    as inference does): concurrent, so Serve's proxy spreads them over both replicas
    (one after another, it keeps choosing the same idle one)."""
    def one(_: int) -> httpx.Response:
        return httpx.get(f"{url}/v1/usage", timeout=60,
                         headers={"authorization": f"Bearer {secret}"})

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def _replicas_of(responses: list[httpx.Response]) -> set[str]:
    return {r.headers.get("x-sluice-ingress", "?") for r in responses}


def _admin(url: str, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{url}/v1/admin/keys{path}", timeout=30,
                         headers={"authorization": f"Bearer {ADMIN}"}, **kw)


def _until(what: str, check, bound_s: float) -> float:
    """Seconds until check() holds; fails past bound_s."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > bound_s:
            pytest.fail(f"{what} did not hold within {bound_s:.1f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_burst_through_two_replicas_accepts_at_most_the_rpm(two_ingress: str) -> None:
    url = two_ingress
    responses = _burst(url, LIMITED, 4 * RPM)
    statuses = [r.status_code for r in responses]
    accepted = statuses.count(200)
    assert len(_replicas_of(responses)) == 2  # both replicas took part of the burst
    assert 1 <= accepted <= RPM, statuses  # one Redis counter: no per-replica slack
    assert set(statuses) <= {200, 429}, _unexpected(responses, {200, 429})
    for r in responses:
        if r.status_code == 429:
            body = r.json()["error"]
            assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
            assert r.headers["x-ratelimit-remaining-requests"] == "0"
            assert r.headers["x-ratelimit-reset-requests"]
        else:
            assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert _chat(url, OTHER).status_code == 200  # another key is unaffected


def test_a_burst_through_two_replicas_uses_at_most_the_tpm(two_ingress: str) -> None:
    """Tokens per minute through both replicas: each request reserves its prompt (estimated)
    and max_tokens at admission, corrected to what it used when it ends, so what the
    accepted requests used in the minute is at most the limit plus one request (an
    estimate that fell short is charged when that request ends)."""
    url = two_ingress
    responses = _burst(url, TOKENS, 16, max_tokens=TPM_MAX_TOKENS)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, _unexpected(responses, {200, 429})
    assert len(_replicas_of(responses)) == 2
    used = [r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200]
    print(f"{len(used)} of 16 accepted through both replicas, using {sum(used)} tokens "
          f"({used}) of the {TPM} TPM")
    assert used and statuses.count(429) >= 8, statuses  # ~5 reservations fit in TPM
    assert sum(used) <= TPM + max(used), (used, TPM)
    for r in responses:
        assert r.headers["x-ratelimit-limit-tokens"] == str(TPM), dict(r.headers)
        if r.status_code == 429:
            body = r.json()["error"]
            assert body["code"] == "rate_limit_exceeded" and body["type"] == "tokens", body
            assert int(r.headers["retry-after"]) >= 1
            # (what was left is less than this request's reservation: max_tokens and a
            # prompt guessed at a quarter of the body's ~80 bytes)
            assert int(r.headers["x-ratelimit-remaining-tokens"]) < TPM_MAX_TOKENS + 32
            assert r.headers["x-ratelimit-reset-tokens"]
    assert _chat(url, OTHER).status_code == 200  # another key is unaffected


def test_a_key_is_created_used_rotated_and_revoked_on_every_replica(two_ingress: str) -> None:
    url = two_ingress
    ident = f"mi-app-{uuid.uuid4().hex[:8]}"  # `sluice serve` keeps its Redis between runs
    created = _admin(url, "POST", "", json={"id": ident, "tenant": "t-app",
                                            "models": ["small"], "requests_per_minute": 1000})
    assert created.status_code == 201, created.text
    card = created.json()
    secret = card["key"]
    assert card["id"] == ident and "sha256" not in card
    took = _until("the new key accepted", lambda: _chat(url, secret).status_code == 200,
                  REFRESH_S + 3)
    print(f"created key in force after {took:.2f} s (bound {REFRESH_S} s)")
    time.sleep(REFRESH_S)  # every replica has refreshed since the change
    used = _everywhere(url, secret)
    assert {r.status_code for r in used} == {200} and len(_replicas_of(used)) == 2
    answer = _chat(url, secret)
    assert answer.status_code == 200
    assert answer.headers["x-ratelimit-limit-requests"] == "1000"  # the key's own limit
    denied = _chat(url, secret, model="large")  # limited to `small`
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    listed = _admin(url, "GET", "").json()["data"]
    assert ident in [k["id"] for k in listed] and secret not in json.dumps(listed)

    rotated = _admin(url, "POST", f"/{ident}/rotate")
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["key"]
    time.sleep(REFRESH_S + 0.5)
    old = _everywhere(url, secret)
    assert {r.status_code for r in old} == {401} and len(_replicas_of(old)) == 2
    assert _chat(url, new_secret).status_code == 200

    revoked = _admin(url, "DELETE", f"/{ident}")
    assert revoked.status_code == 200 and revoked.json()["deleted"] is True
    time.sleep(REFRESH_S + 0.5)
    gone = _everywhere(url, new_secret)
    assert {r.status_code for r in gone} == {401} and len(_replicas_of(gone)) == 2
    assert _admin(url, "DELETE", f"/{ident}").status_code == 404
    # profile keys are GitOps: not changeable through the API; non-admins may not manage
    assert _admin(url, "POST", "/mi-limited/rotate").status_code == 409
    plain = httpx.get(f"{url}/v1/admin/keys", timeout=30,
                      headers={"authorization": f"Bearer {OTHER}"})
    assert plain.status_code == 403
    assert httpx.get(f"{url}/v1/admin/keys", timeout=30).status_code == 401


def test_the_cli_manages_the_same_store(two_ingress: str) -> None:
    url = two_ingress
    cli = [sys.executable, "-m", "sluice.cli", "keys"]
    store = ["--redis-url", f"redis://127.0.0.1:{REDIS_PORT}"]
    ident = f"mi-cli-{uuid.uuid4().hex[:8]}"
    out = subprocess.run([*cli, "create", "--id", ident, "--tenant", "t-cli", *store],
                         capture_output=True, text=True, timeout=60, check=True)
    secret = json.loads(out.stdout)["key"]
    _until("the CLI's key accepted", lambda: _chat(url, secret).status_code == 200,
           REFRESH_S + 3)
    listed = subprocess.run([*cli, "list", *store], capture_output=True, text=True,
                            timeout=60, check=True)
    assert ident in listed.stdout and secret not in listed.stdout
    subprocess.run([*cli, "revoke", ident, *store], capture_output=True, timeout=60,
                   check=True)
    time.sleep(REFRESH_S + 0.5)
    assert {r.status_code for r in _everywhere(url, secret)} == {401}


def _scrape_targets(url: str) -> list[str]:
    """GET /metrics/targets (through the proxy: either replica answers from the registry)."""
    answer = httpx.get(f"{url}/metrics/targets", timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    (group,) = answer.json()
    assert group["labels"] == {"job": JOB}
    return list(group["targets"])


def _requests_total(target: str) -> float:
    """sluice_requests_total of the one replica behind `target` (its own endpoint)."""
    answer = httpx.get(f"http://{target}/metrics", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(
        "text/plain"), answer.text[:200]
    return sum(sample.value for family in text_string_to_metric_families(answer.text)
               for sample in family.samples if sample.name == "sluice_requests_total")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prometheus_up(prom: LocalPrometheus) -> list[dict[str, Any]]:
    answer = httpx.get(f"{prom.url}/api/v1/query", params={"query": f'up{{job="{JOB}"}}'},
                       timeout=30)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["data"]["result"])


def test_each_ingress_replica_is_a_scrape_target_of_its_own(two_ingress: str,
                                                            tmp_path: Path) -> None:
    """GET /metrics/targets lists both replicas' own endpoints; each counts only the chats
    its replica answered, and the two together count every chat exactly once (the API
    port's /metrics would read whichever replica the proxy picked)."""
    url = two_ingress
    targets: list[str] = []

    def registered() -> bool:
        targets[:] = _scrape_targets(url)
        return len(targets) == 2

    _until("both replicas registered", registered, 60)
    assert len(set(targets)) == 2, targets
    before = {t: _requests_total(t) for t in targets}
    n = 8
    responses = _burst(url, OTHER, n)  # concurrent: the proxy spreads them
    assert [r.status_code for r in responses] == [200] * n, _unexpected(responses, {200})
    by_replica: dict[str, int] = {}
    for r in responses:
        replica = r.headers["x-sluice-ingress"]
        by_replica[replica] = by_replica.get(replica, 0) + 1
    # each answering replica's own target, from its entry in the registry
    with redis.Redis(port=REDIS_PORT, socket_timeout=10, decode_responses=True) as store:
        own = {replica: str(store.get(PREFIX + replica)) for replica in by_replica}
    expected = {t: 0 for t in targets}
    for replica, count in by_replica.items():
        assert own[replica] in expected, (own, targets)
        expected[own[replica]] += count

    def grown() -> dict[str, float]:
        return {t: _requests_total(t) - before[t] for t in targets}

    # a request is counted when it is settled, just after its answer: bounded wait
    _until("every chat counted", lambda: sum(grown().values()) >= n, 30)
    time.sleep(1)  # nothing more arrives
    growth = grown()
    print(f"{n} chats over replicas {by_replica}; growth per target {growth}")
    assert sum(growth.values()) == n, growth
    assert growth == expected, (growth, expected)  # each target: its own replica's only

    if shutil.which("prometheus") is None:
        print("prometheus not installed: the http_sd scrape is not checked")
        return
    with LocalPrometheus(tmp_path / "prometheus", http_sd=f"{url}/metrics/targets",
                         port=_free_port(), scrape_interval_s=2) as prom:
        up: list[dict[str, Any]] = []

        def both_up() -> bool:
            up[:] = _prometheus_up(prom)
            return len(up) == 2 and all(s["value"][1] == "1" for s in up)

        _until("Prometheus scraping both replicas through http_sd", both_up, 60)
        assert {s["metric"]["instance"] for s in up} == set(targets)


def test_an_overloaded_model_sheds_load_fast_with_retriable_503s(two_ingress: str) -> None:
    """More concurrent requests than small's engine holds (MAX_ONGOING) plus what each
    ingress queues (MAX_QUEUED): the rest are refused at once, not queued without bound;
    every accepted one completes."""
    url = two_ingress

    def timed(_: int) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        r = _chat(url, OTHER, max_tokens=64, ignore_eos=True)
        return r, time.monotonic() - started

    n = 24
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(timed, range(n)))
    shed = [(r, s) for r, s in results if r.status_code == 503]
    done = [(r, s) for r, s in results if r.status_code == 200]
    assert len(shed) + len(done) == n, _unexpected([r for r, _ in results], {200, 503})
    assert shed and len(done) >= MAX_ONGOING
    for r, _ in shed:
        assert r.json()["error"]["code"] == "model_overloaded"
        assert int(r.headers["retry-after"]) >= 1
    for r, _ in done:
        assert r.json()["usage"]["completion_tokens"] == 64
    slowest_shed = max(s for _, s in shed)
    print(f"{len(shed)} of {n} shed, slowest refusal {slowest_shed * 1000:.0f} ms; "
          f"accepted took {min(s for _, s in done):.2f}-{max(s for _, s in done):.2f} s")
    assert slowest_shed < max(s for _, s in done)  # refused before the work it would join
