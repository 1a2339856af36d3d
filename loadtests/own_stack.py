"""A `sluice serve` of a benchmark's own: a subprocess on its own ports, ready or not in a
bounded time, stopped with Ctrl-C (then killed)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def serve(profile: Path, log: Path, port: int, redis_port: int,
          ready_timeout_s: float = 600) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sluice.cli", "serve", "--profile", str(profile),
             "--port", str(port), "--redis-port", str(redis_port), "--no-dashboard",
             "--run-dir", str(log.parent / "run")],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)  # its own process group: stop() can end all of it
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("sluice serve exited:\n" + log.read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(2)
    stop(proc)
    raise SystemExit(f"sluice serve not ready in {ready_timeout_s:.0f} s")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def stop(proc: subprocess.Popen[bytes], ports: tuple[int, ...] = (),
         free_timeout_s: float = 30) -> None:
    """Ctrl-C (Serve, Ray and its Redis shut down), then SIGKILL to its whole process group
    if it is still there after 120 s; then wait (bounded) until `ports` are free, so the
    next stack on them cannot meet a leftover of this one."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + free_timeout_s
    while not all(_port_free(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.5)
