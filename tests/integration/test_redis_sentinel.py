"""The caches through Redis Sentinel: a real redis-server master and a real sentinel."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from sluice.cache_tier.redis_server import LocalRedisServer
from sluice.cache_tier.redis_target import async_client
from sluice.cache_tier.response_cache import ResponseCache
from sluice.schema.caches import ResponseCacheConfig

pytestmark = pytest.mark.integration
MASTER_PORT, SENTINEL_PORT = 6398, 26398


def test_response_cache_reaches_the_master_through_sentinel(tmp_path: Path) -> None:
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {SENTINEL_PORT}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor sluice 127.0.0.1 {MASTER_PORT} 1\n")
    with LocalRedisServer(tmp_path / "master", port=MASTER_PORT, appendonly=False):
        binary = shutil.which("redis-server")
        assert binary is not None
        sentinel = subprocess.Popen([binary, str(conf), "--sentinel"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            url = f"redis-sentinel://127.0.0.1:{SENTINEL_PORT}/sluice"

            async def scenario() -> str | None:
                cache = ResponseCache(async_client(url, 0.5), ResponseCacheConfig())
                deadline = time.monotonic() + 15
                while not await cache.probe():  # the sentinel needs a moment to find it
                    assert time.monotonic() < deadline, "sentinel never served the master"
                    await asyncio.sleep(0.2)
                assert await cache.put("sluice:rc:sentinel-test", '{"ok": true}')
                return await cache.get("sluice:rc:sentinel-test")

            assert asyncio.run(scenario()) == '{"ok": true}'
        finally:
            sentinel.terminate()
            sentinel.wait(timeout=10)
