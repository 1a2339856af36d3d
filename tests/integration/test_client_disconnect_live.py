"""A client that goes away stops its engine request: vLLM aborts it instead of generating
for nobody. Measured at the engine: the large model's one replica is asked how many requests
its vLLM engine holds (`SluiceLLMServer.engine_requests`, vLLM's own count)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from ray import serve

from sluice.deployments.local_stack import APP_NAME

pytestmark = pytest.mark.integration
LONG = {"model": "large", "max_tokens": 1500, "ignore_eos": True,
        "messages": [{"role": "user", "content": "count to a thousand, slowly"}]}
ABORT_BOUND_S = 3.0  # the issue asks about a second; a loaded 2-core runner gets slack


def _engine_requests(stack) -> Callable[[], int]:
    handle = serve.get_deployment_handle("SluiceLLMServer:large", app_name=APP_NAME)
    return lambda: int(handle.engine_requests.remote().result(timeout_s=30))


def _until(predicate: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until predicate() held, or None if it did not within timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def test_a_stream_the_client_closes_is_aborted_in_the_engine(stack, base_url: str) -> None:
    held = _engine_requests(stack)
    assert _until(lambda: held() == 0, 60) is not None, "the engine is busy before the test"
    with httpx.Client(base_url=base_url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=LONG | {"stream": True},
                           headers={"cache-control": "no-store"}) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            for _ in range(3):
                next(lines)
            assert held() == 1  # generating
        # leaving the block closes the connection mid-stream
    took = _until(lambda: held() == 0, 30)
    print(f"stream closed by its client: the engine dropped it after {took} s")
    assert took is not None and took < ABORT_BOUND_S, took


def test_a_plain_request_the_client_gives_up_on_is_aborted_in_the_engine(
        stack, base_url: str) -> None:
    held = _engine_requests(stack)
    assert _until(lambda: held() == 0, 60) is not None, "the engine is busy before the test"
    gave_up = threading.Event()

    def impatient() -> None:
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=base_url,
                                                             timeout=4) as client:
            client.post("/v1/chat/completions", json=LONG,
                        headers={"cache-control": "no-store"})
        gave_up.set()

    thread = threading.Thread(target=impatient)
    thread.start()
    assert _until(lambda: held() == 1, 4) is not None, "the request never reached the engine"
    thread.join(timeout=30)
    assert gave_up.is_set()
    took = _until(lambda: held() == 0, 30)
    print(f"plain request given up by its client: the engine dropped it after {took} s")
    assert took is not None and took < ABORT_BOUND_S, took
