"""Rollouts on a real stack (#19): variants, shadow, A/B, canary rollbacks and promotion.

Its own `sluice serve` (a subprocess, on ports of its own) with the catalog of
`loadtests.rollout_stack`: `small`, its variants `small@v2` (the same weights: a healthy new
version), `small@v3` (a version whose replica fails half its requests: the profile's
injected faults) and `small@v4` (one that answers 1.5 s late), and a `large`.
Gates that decide on tens of requests (a test's volume; the shipped defaults need hundreds:
BENCHMARKS "Canary gates"), 3 s steps, and the state re-read every 0.5 s. Rollouts are
started, followed and ended with the `sluice rollout` CLI and the admin API. The tests run in
order (shadow and A/B while `small` serves, then the rollbacks, then the promotion) and every
wait is bounded. Marked `alone`: five engines beside the shared stack's would not fit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtests import own_stack
from loadtests.rollout_stack import FAILING, SLOW, SPECULATIVE, write_profile

pytestmark = [pytest.mark.integration, pytest.mark.alone]
ROOT = Path(__file__).resolve().parents[2]
PORT, REDIS_PORT = 8890, 6443
URL = f"http://127.0.0.1:{PORT}"
GATES = ["--min-requests", "40", "--quantile", "0.5", "--ttft-ratio", "3", "--tpot-ratio", "3",
         "--error-margin", "0.1"]
INJECTED = "Injected fault"


def _ready() -> bool:
    try:
        return httpx.get(f"{URL}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(what: str, timeout_s: float, check) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1)


@pytest.fixture(autouse=True)
def no_rollout_left(serve) -> Iterator[None]:
    """A test that fails midway leaves no running rollout for the next one."""
    yield
    httpx.post(f"{URL}/v1/admin/rollouts/small/abort", timeout=30)


@pytest.fixture(scope="module")
def serve(tmp_path_factory, shared_stack_stopped) -> Iterator[subprocess.Popen]:
    tmp = tmp_path_factory.mktemp("rollouts")
    log_path = tmp / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "serve", "--profile",
         str(write_profile(tmp, {"poll_s": 0.5, "evaluate_s": 1.0})),
         "--port", str(PORT), "--redis-port", str(REDIS_PORT), "--no-dashboard",
         "--run-dir", str(tmp / "run")],  # a Redis of its own: no rollout of an earlier run
        cwd=ROOT, stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait("sluice serve to be ready", 600, lambda: _ready() or (
            proc.poll() is not None and pytest.fail(log_path.read_text()[-3000:])))
        yield proc
    finally:
        own_stack.stop(proc)  # Ctrl-C, then killed after 120 s


def cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "sluice.cli", "rollout", *args, "--url", URL,
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def status(model: str = "small") -> dict:
    return httpx.get(f"{URL}/v1/admin/rollouts/{model}", timeout=30).json()


def chat(client: httpx.Client, user: str | None = None, model: str = "small",
         stream: bool = True) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": f"hello {user}"}],
            "max_tokens": 8, "min_tokens": 8, "temperature": 0, "stream": stream}
    headers = {"x-sluice-user": user} if user else {}
    if not stream:
        return client.post(f"{URL}/v1/chat/completions", json=body, headers=headers)
    with client.stream("POST", f"{URL}/v1/chat/completions", json=body,
                       headers=headers) as r:
        r.read()
    return r


class Load:
    """Streamed requests from 4 threads, each from a new user, until stopped; every answer
    kept (status, variant, body) for the checks."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, str | None, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(4)]

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                try:
                    r = chat(client, uuid.uuid4().hex)
                    self.answers.append((r.status_code, r.headers.get("x-sluice-variant"),
                                         r.text))
                except httpx.HTTPError as exc:
                    self.answers.append((0, None, repr(exc)))

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)


def _until(state: str, timeout_s: float) -> dict:
    seen: dict = {}

    def reached() -> bool:
        seen.update(status())
        return seen.get("status") in (state, "rolled_back", "promoted", "aborted")

    _wait(f"the rollout to be {state}", timeout_s, reached)
    assert seen["status"] == state, json.dumps({k: seen.get(k) for k in (
        "status", "reason", "history", "canary")}, indent=1)[-3000:]
    return seen


def test_every_answer_names_its_variant_and_a_variant_may_be_asked_for(serve) -> None:
    with httpx.Client(timeout=60) as client:
        base = chat(client, model="small", stream=False)
        v2 = chat(client, model="small@v2", stream=False)
    assert base.status_code == v2.status_code == 200, (base.text, v2.text)
    assert base.headers["x-sluice-variant"] == "v1"
    assert (v2.headers["x-sluice-variant"], v2.headers["x-sluice-model"]) == ("v2", "small@v2")
    # the same weights, greedy: the same answer
    assert (base.json()["choices"][0]["message"]["content"]
            == v2.json()["choices"][0]["message"]["content"])


def _requests_of(model: str) -> int:
    usage = httpx.get(f"{URL}/v1/usage", params={"group_by": "served_model"}, timeout=30).json()
    return sum(row["requests"] for row in usage["data"] if row["group"] == model)


def test_a_shadow_never_changes_the_users_answer_and_its_pairs_are_recorded(serve) -> None:
    v2_before = _requests_of("small@v2")
    asked = [(f"u{i}", i % 2 == 0) for i in range(6)]  # streamed and whole, alternately
    with httpx.Client(timeout=60) as client:
        before = [[chat(client, u, stream=st) for u, st in asked] for _ in range(2)]
        cli("start", "small", "--to", "v2", "--kind", "shadow", "--percent", "100")
        time.sleep(1.5)  # every ingress replica has read it (poll_s 0.5)
        during = [chat(client, u, stream=st) for u, st in asked]
        _wait("the shadow pairs to be recorded", 60,
              lambda: (status().get("shadow") or {}).get("pairs", 0) >= 6)
        assert cli("abort", "small")["status"] == "aborted"
        time.sleep(1.5)
        before.append([chat(client, u, stream=st) for u, st in asked])

    def visible(r: httpx.Response) -> str:
        """What a user sees, less what differs per call anyway (ids, times, the cost)."""
        if r.headers["content-type"].startswith("application/json"):
            body = r.json()
            return json.dumps([body["model"], body["choices"],
                               {k: v for k, v in body["usage"].items() if k != "cost"}])
        # a stream as the user reads it: the model, each choice's text and finish reason
        # (how tokens fall into events depends on timing, which the copies' load changes,
        # not on the shadow: the CI run at 3b1b311 saw one such split)
        events = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: {")]
        text: dict[int, list[str]] = {}
        finish: dict[int, str | None] = {}
        for e in events:
            for c in e.get("choices") or []:
                text.setdefault(c["index"], []).append((c.get("delta") or {}).get("content")
                                                       or "")
                finish[c["index"]] = c.get("finish_reason") or finish.get(c["index"])
        return json.dumps([sorted({e["model"] for e in events}),
                           {i: "".join(t) for i, t in text.items()}, finish])

    assert [r.status_code for r in during] == [200] * 6
    assert all(r.headers["x-sluice-variant"] == "v1" for r in during)  # never the shadow
    # Each answer given with the shadow on is one the same request gets without it (three
    # tries, before and after: the random demo weights have near-ties that the CPU engines,
    # busy with the copies or not, may resolve either way; a change the shadow made to the
    # bytes would be an answer never seen without it)
    for i, d in enumerate(during):
        seen = {visible(b[i]) for b in before}
        assert visible(d) in seen, (asked[i], visible(d)[:1500], min(seen)[:1500])
    shadow = status()["shadow"]
    assert shadow["pairs"] >= 6 and shadow["candidate_errors"] == 0
    assert shadow["agreement"]["rate"] >= 0.8  # the same weights, greedy
    # the shadow's metrics (the dashboard's Rollouts row), on the one ingress replica here
    pairs = {s.labels["result"]: s.value
             for f in text_string_to_metric_families(httpx.get(f"{URL}/metrics", timeout=30).text)
             if f.name == "sluice_rollout_compared_pairs" for s in f.samples
             if s.name.endswith("_total") and s.labels.get("candidate") == "small@v2"}
    assert pairs.get("agreed", 0) + pairs.get("disagreed", 0) >= 6, pairs
    # the copies were not billed: the ledger has the users' requests only
    assert _requests_of("small@v2") == v2_before


def test_a_cascade_route_and_a_prompt_template_are_rolled_out_by_version(serve) -> None:
    """An A/B of `auto` against `auto@v2` (whose judge escalates everything to `large`) and
    one of the template `support` against `support@v2` (a longer system message that
    replaces the client's): each user gets one version, named in its header, and the
    engine saw that version's prompt (its prompt_tokens); the ledger records the versions."""
    def ask(client: httpx.Client, user: str, model: str = "auto",
            prompt: str | None = None) -> httpx.Response:
        headers = {"x-sluice-user": user, **({"x-sluice-prompt": prompt} if prompt else {})}
        r = client.post(f"{URL}/v1/chat/completions", headers=headers, json={
            "model": model, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "system", "content": "Be kind."},
                         {"role": "user", "content": "Where is order 1234?"}]})
        assert r.status_code == 200, r.text
        return r

    try:
        with httpx.Client(timeout=120) as client:
            cli("start", "auto", "--to", "v2", "--kind", "ab", "--percent", "50")
            time.sleep(1.5)  # every ingress replica has read it
            users = [f"route-{i}" for i in range(24)]
            seen = {u: ask(client, u) for u in users}
            arms = Counter(r.headers["x-sluice-variant"] for r in seen.values())
            assert set(arms) == {"v1", "v2"}, arms
            for r in seen.values():  # v1 accepts small's answer, v2 escalates to large
                assert r.headers["x-sluice-model"] == (
                    "small" if r.headers["x-sluice-variant"] == "v1" else "large"), r.headers
            again = {u: ask(client, u).headers["x-sluice-variant"] for u in users[:8]}
            assert all(again[u] == seen[u].headers["x-sluice-variant"] for u in again)
            assert ask(client, "by-name", "auto@v2").headers["x-sluice-variant"] == "v2"
            cli("abort", "auto")

            plain = ask(client, "p0", "small").json()["usage"]["prompt_tokens"]
            v1 = ask(client, "p0", "small", "support")
            assert v1.headers["x-sluice-prompt-variant"] == "v1"
            # the template's system message came first, the client's stayed after it
            assert v1.json()["usage"]["prompt_tokens"] > plain
            cli("start", "--prompt", "support", "--to", "v2", "--kind", "ab", "--percent", "50")
            time.sleep(1.5)
            tokens: dict[str, set[int]] = {}
            for u in (f"prompt-{i}" for i in range(24)):
                r = ask(client, u, "small", "support")
                tokens.setdefault(r.headers["x-sluice-prompt-variant"], set()).add(
                    r.json()["usage"]["prompt_tokens"])
            assert set(tokens) == {"v1", "v2"}, tokens
            # one prompt per version (the same question), and v2's longer one replaced the
            # client's system message
            assert len(tokens["v1"]) == 1 and len(tokens["v2"]) == 1, tokens
            assert min(tokens["v2"]) > min(tokens["v1"]), tokens
            missing = client.post(f"{URL}/v1/chat/completions",
                                  headers={"x-sluice-prompt": "nope"},
                                  json={"model": "small", "max_tokens": 4, "messages": [
                                      {"role": "user", "content": "hi"}]})
            assert missing.status_code == 404, missing.text
            assert missing.json()["error"]["code"] == "prompt_not_found"
        time.sleep(1.5)  # the ledger's last batch
        groups = {g["group"] for g in httpx.get(
            f"{URL}/v1/usage", params={"group_by": "variant"}, timeout=30).json()["data"]}
        assert {"auto@v2", "prompt:support@v2"} <= groups, groups
    finally:
        for name in ("auto", "prompt:support"):
            httpx.post(f"{URL}/v1/admin/rollouts/{name}/abort", timeout=30)


def test_an_ab_split_holds_its_share_sticks_and_survives_an_ingress_restart(serve) -> None:
    cli("start", "small", "--to", "v2", "--kind", "ab", "--percent", "30")
    time.sleep(1.5)
    users = [f"ab-{i}" for i in range(300)]
    with httpx.Client(timeout=60) as client:
        first = {u: chat(client, u, stream=False).headers.get("x-sluice-variant")
                 for u in users}
        again = {u: chat(client, u, stream=False).headers.get("x-sluice-variant")
                 for u in users[:40]}
    arms = Counter(first.values())
    assert set(arms) == {"v1", "v2"}, arms
    assert abs(arms["v2"] / len(users) - 0.30) < 0.09, arms  # 3.4 sigma at n=300
    assert all(again[u] == first[u] for u in again)  # sticky
    report = status()["measured"]
    assert report["arms"]["candidate"]["requests"] >= arms["v2"]
    assert "error_rate" in report["difference"] and report["difference"]["ttft_mean_s"]
    # the ingress replica killed: Serve starts another, which reads the split from Redis
    victims = [p for p in psutil.Process(serve.pid).children(recursive=True)
               if "SluiceIngress" in " ".join(p.cmdline())]
    assert victims
    for p in victims:
        p.kill()
    _wait("a new ingress replica", 240, _ready)
    with httpx.Client(timeout=60) as client:
        after = {u: chat(client, u, stream=False).headers.get("x-sluice-variant")
                 for u in users[:40]}
    assert after == {u: first[u] for u in users[:40]}
    assert status()["share_percent"] == 30
    assert cli("abort", "small")["status"] == "aborted"


def test_a_variant_with_speculative_decoding_serves_the_models_own_answers(serve) -> None:
    """`small@ngram` (vLLM's n-gram speculation, 3 tokens) on small's weights: greedy, with
    no prefix cache, it must answer what small answers, token for token, streamed or not
    (speculation proposes; the model's own verification decides every token)."""
    model = f"small@{SPECULATIVE}"
    with httpx.Client(timeout=60) as client:
        for i in range(3):
            plain = chat(client, f"spec-{i}", stream=False)
            fast = chat(client, f"spec-{i}", model=model, stream=False)
            streamed = chat(client, f"spec-{i}", model=model)
            assert fast.status_code == 200 and streamed.status_code == 200, fast.text
            assert fast.headers["x-sluice-model"] == model
            assert fast.json()["usage"]["completion_tokens"] == 8
            text = fast.json()["choices"][0]["message"]["content"]
            assert text == plain.json()["choices"][0]["message"]["content"], (i, text)
            deltas = [json.loads(line[6:]) for line in streamed.text.splitlines()
                      if line.startswith("data: {")]
            assert "".join(c["delta"].get("content") or "" for d in deltas
                           for c in d["choices"]) == text
        # what vLLM cannot do while speculating is the client's 400, said, not a 500
        refused = client.post(f"{URL}/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "min_p": 0.1})
        assert refused.status_code == 400, refused.text
        assert "speculative" in refused.json()["error"]["message"], refused.text


def _rolled_back_by(variant: str, gate: str) -> None:
    cli("start", "small", "--to", variant, "--steps", "25,50,100", "--step-s", "3", *GATES)
    with Load() as load:
        seen = _until("rolled_back", 300)
    assert seen["reason"].startswith(f"{gate}:"), seen["reason"]
    failed = [(s, body) for s, v, body in load.answers if s != 200]
    # only the candidate's own faults failed requests: the rollout machinery none
    assert all(s == 500 and INJECTED in body for s, body in failed), failed[:3]
    assert len(load.answers) > 80
    time.sleep(1.5)  # every ingress replica has read the rollback
    with httpx.Client(timeout=60) as client:  # back on the baseline for everyone
        assert {chat(client, f"after-{i}").headers["x-sluice-variant"]
                for i in range(10)} == {"v1"}
    events = httpx.get(f"{URL}/metrics", timeout=30).text
    assert 'sluice_rollout_events_total{event="rolled_back",model="small"}' in events
    # the dashboard's share panel: back to 0 for the candidate that lost
    shares = {s.labels["variant"]: s.value for f in text_string_to_metric_families(events)
              if f.name == "sluice_rollout_share" for s in f.samples
              if s.labels.get("model") == "small"}
    assert shares.get(f"small@{variant}") == 0.0, shares


def test_a_candidate_that_fails_requests_is_rolled_back_for_its_error_rate(serve) -> None:
    _rolled_back_by(FAILING, "error_rate")


def test_a_slow_candidate_is_rolled_back_for_its_first_token_latency(serve) -> None:
    _rolled_back_by(SLOW, "ttft")


def test_a_healthy_canary_advances_through_its_steps_and_is_promoted(serve) -> None:
    # with the quality gate: every canary answer is also asked of the baseline, and they agree
    cli("start", "small", "--to", "v2", "--steps", "25,50,100", "--step-s", "3", *GATES,
        "--min-agreement", "0.8", "--quality-sample", "1", "--min-pairs", "20")
    with Load() as load:
        seen = _until("promoted", 300)
    gates = {g["gate"]: g for g in seen["canary"]["gates"]}
    assert gates["agreement"]["verdict"] == "pass", gates["agreement"]
    events = [(e["event"], e["share"]) for e in seen["history"]]
    # (then `retired`, once every replica has read the promotion)
    assert events[:3] == [("started", 25), ("advanced", 50), ("promoted", 100)], events
    assert all(s == 200 for s, _, _ in load.answers), [a for a in load.answers if a[0] != 200][:3]
    _wait("the old variant drained", 30, lambda: status().get("retired"))
    assert status()["retired"].startswith("drained: no requests go to small")
    with httpx.Client(timeout=60) as client:
        assert {chat(client, f"p-{i}").headers["x-sluice-variant"] for i in range(10)} == {"v2"}
    listed = cli("status")
    assert listed["serving"]["small"] == "small@v2"  # (auto's and the template's aborted
    # rollouts, earlier in this module, left their baselines serving: auto, prompt:support)
    assert _requests_of("small@v2") >= 40  # the ledger names the variant that answered
