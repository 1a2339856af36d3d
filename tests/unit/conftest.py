"""A real redis-server per test, for the unit tests of modules whose logic is a Redis
script (the ledger, budget holds, rate limits): a fake would test the fake. The demo
models' real tokenizer and chat template, for the tests of what reads them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.demo_models import build_tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path) -> Iterator[LocalRedisServer]:
    server = LocalRedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: LocalRedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo models' tokenizer and chat template, built as `sluice models build-demo`
    builds them (models/demo is not in the repository)."""
    folder = tmp_path_factory.mktemp("demo-tokenizer")
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(demo_dir: Path):
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(str(demo_dir))  # as the engine loads it
