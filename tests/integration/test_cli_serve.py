"""`sluice serve` (what `make serve` runs) as a user runs it: up, answering, and Ctrl-C
leaves no process behind. Runs before the shared stack starts (collection order), so the
two never compete for the machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PORT, REDIS_PORT = 8775, 6395


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return f"<pid {proc.pid}>"


def test_serve_answers_then_ctrl_c_stops_everything(tmp_path: Path) -> None:
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "serve", "--port", str(PORT),
         "--redis-port", str(REDIS_PORT)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    descendants: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        else:
            pytest.fail("sluice serve did not become ready in 600 s")
        descendants = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(_cmdline(p) for p in descendants)
        assert "redis-server" in names and "raylet" in names

        resp = httpx.post(f"http://127.0.0.1:{PORT}/v1/chat/completions", timeout=60, json={
            "model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert resp.status_code == 200 and resp.headers["x-sluice-route"] in {"small", "large", "small>large"}
        # the endpoint and a copy-paste example are printed once readiness is seen
        deadline = time.monotonic() + 60
        while f"http://127.0.0.1:{PORT}/v1" not in (tmp_path / "serve.log").read_text():
            assert time.monotonic() < deadline, "sluice serve never printed its endpoint"
            time.sleep(1)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        gone, alive = psutil.wait_procs(descendants, timeout=60)
        assert not alive, [_cmdline(p)[:120] for p in alive]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        for p in descendants:
            if p.is_running():
                p.kill()
