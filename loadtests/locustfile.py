"""Locust users for Sluice: realistic streamed chat traffic with TTFT and inter-token metrics.

Every request streams; besides Locust's own row per request, each one records
  TTFT  time to the first content token (ms)
  ITL   mean gap between content chunks (ms)
  E2E   whole request (ms), with the output tokens as its "content size"
as Locust request rows named after the workload, so the web UI, the CSV and the HTML report
show them. Run everything (a weighted mix of all users) or name user classes:

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000          # web UI
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000 --headless \\
        -u 8 -r 2 -t 60s --csv bench-results/locust/run --html bench-results/locust/run.html
    locust -f loadtests/locustfile.py,loadtests/shapes/spike.py ...          # with a shape

`--model` picks the model (default `small`; `auto` exercises the cascade).
"""

from __future__ import annotations

import random
import time

from locust import HttpUser, between, events, task

from loadtests.streaming import StreamResult, read_stream
from loadtests.workloads import MULTI_TURN, RAG, SHORT_CHAT, chat_request, tenant_document, text

TENANTS = 4


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # noqa: ANN001 - Locust's parser
    parser.add_argument("--model", default="small", help="Model to load (small, large, auto).")


def record(environment, name: str, result: StreamResult, exc: Exception | None = None) -> None:
    """Fire the TTFT / ITL / E2E rows of one streamed request."""
    fire = environment.events.request.fire
    if exc is not None or not result.ok:
        error = exc or RuntimeError(result.error or f"HTTP {result.status}")
        fire(request_type="E2E", name=name, response_time=result.total_s * 1000,
             response_length=0, exception=error, context={})
        return
    if result.ttft_s is not None:
        fire(request_type="TTFT", name=name, response_time=result.ttft_s * 1000,
             response_length=result.output_tokens, exception=None, context={})
    if result.gaps_s:
        fire(request_type="ITL", name=name,
             response_time=1000 * sum(result.gaps_s) / len(result.gaps_s),
             response_length=0, exception=None, context={})
    fire(request_type="E2E", name=name, response_time=result.total_s * 1000,
         response_length=result.output_tokens, exception=None, context={})


class SluiceUser(HttpUser):
    """Shared streaming call; subclasses decide what to ask."""

    abstract = True
    workload_name = "chat"

    def model(self) -> str:
        options = getattr(self.environment, "parsed_options", None)
        return getattr(options, "model", None) or "small"

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> StreamResult:
        body = chat_request(self.model(), messages, max_tokens)
        started = time.perf_counter()
        result = StreamResult()
        try:
            with self.client.post("/v1/chat/completions", json=body, stream=True,
                                  name=f"POST {self.workload_name}", catch_response=True,
                                  headers={"cache-control": "no-store"}) as resp:
                if resp.status_code != 200:
                    result.status, result.error = resp.status_code, resp.text[:200]
                    result.total_s = time.perf_counter() - started
                    resp.failure(f"HTTP {resp.status_code}")
                else:
                    result = read_stream(resp.iter_lines(), started)
                    resp.success()
            record(self.environment, self.workload_name, result)
        except Exception as exc:  # noqa: BLE001 - a failed request is a data point
            result.total_s = time.perf_counter() - started
            record(self.environment, self.workload_name, result, exc)
        sink = getattr(self.environment, "results", None)  # the capacity planner's
        if sink is not None:
            sink.append(result)
        return result


class ShortChatUser(SluiceUser):
    """Short questions, short answers."""

    weight = 4
    workload_name = SHORT_CHAT.name
    wait_time = between(0.5, 2.0)

    @task
    def ask(self) -> None:
        rng = random.Random()
        self.chat([{"role": "user", "content": text(rng, SHORT_CHAT.prompt_words.draw(rng))}],
                  SHORT_CHAT.output_tokens.draw(rng))


class RagUser(SluiceUser):
    """Long per-tenant document prefix (shared by that tenant's users), short question."""

    weight = 2
    workload_name = RAG.name
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.tenant = random.randrange(TENANTS)

    @task
    def ask(self) -> None:
        rng = random.Random()
        self.chat([{"role": "system", "content": tenant_document(self.tenant)},
                   {"role": "user", "content": text(rng, RAG.prompt_words.draw(rng))}],
                  RAG.output_tokens.draw(rng))


class MultiTurnUser(SluiceUser):
    """A session whose context grows turn by turn, with think time between turns."""

    weight = 2
    workload_name = MULTI_TURN.name
    wait_time = between(1.0, 4.0)
    max_context_words = 700  # the small demo model's context is 2048 tokens

    def on_start(self) -> None:
        self.messages: list[dict[str, str]] = []

    @task
    def turn(self) -> None:
        rng = random.Random()
        words = sum(len(m["content"].split()) for m in self.messages)
        if words > self.max_context_words or len(self.messages) >= 12:
            self.messages = []  # a new session
        self.messages.append({"role": "user",
                              "content": text(rng, MULTI_TURN.prompt_words.draw(rng))})
        result = self.chat(self.messages, MULTI_TURN.output_tokens.draw(rng))
        self.messages.append({"role": "assistant", "content": result.text or "..."})


class BurstyUser(SluiceUser):
    """Idle, then a burst of back-to-back requests."""

    weight = 1
    workload_name = "bursty"

    def on_start(self) -> None:
        self.left_in_burst = 0

    def wait_time(self) -> float:
        if self.left_in_burst > 0:
            self.left_in_burst -= 1
            return 0.05
        self.left_in_burst = random.randint(4, 10)
        return random.uniform(5.0, 15.0)

    @task
    def ask(self) -> None:
        rng = random.Random()
        self.chat([{"role": "user", "content": text(rng, SHORT_CHAT.prompt_words.draw(rng))}],
                  SHORT_CHAT.output_tokens.draw(rng))
