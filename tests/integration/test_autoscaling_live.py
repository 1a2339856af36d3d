"""Sluice's SLO autoscaling policy on a real stack: load that breaches `large`'s SLO scales it
from 1 to 2 replicas; when the load stops it returns to 1.

Its own `sluice serve` (a subprocess: the session stack keeps its fixed replicas), with a
test catalog whose `large` TPOT objective (1 ms) any real load breaches, and short cooldowns.
Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

# alone: after every other test, with the session's shared stack stopped. In the ci-local
# run at 3ff4a15 its own stack (small, large, then a second large) beside the shared stack's
# three engines passed Ray's 95% memory threshold on the 23.5 GiB machine: the OOM killer
# took five workers, Serve's controller among them, and large never got its second replica
pytestmark = [pytest.mark.integration, pytest.mark.alone]
ROOT = Path(__file__).resolve().parents[2]
PORT, REDIS_PORT = 8790, 6402


def _profile(tmp: Path) -> Path:
    catalog = yaml.safe_load((ROOT / "platform/catalog.yaml").read_text())
    for model in catalog["models"]:
        if model["name"] == "large":
            model["slo"] = {"ttft_p95_s": 2.0, "tpot_p95_s": 0.001, "max_error_rate": 0.01}
    (tmp / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile["catalog"] = str(tmp / "catalog.yaml")
    profile["routing"] = str(ROOT / "platform/routing/routes.yaml")
    profile["models"]["large"] = {"min_replicas": 1, "max_replicas": 2, "autoscaling": {
        "upscale_cooldown_s": 5, "downscale_cooldown_s": 20, "target_ongoing_per_replica": 2}}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _replicas(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).json().get("replicas", {}).get("large")
    except (httpx.HTTPError, ValueError):
        return None


def _wait(what: str, timeout_s: float, check) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(2)


def test_breaching_load_scales_large_up_then_back_down(tmp_path: Path,
                                                      shared_stack_stopped: None) -> None:
    url = f"http://127.0.0.1:{PORT}"
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice.cli", "serve", "--profile", str(_profile(tmp_path)),
         "--port", str(PORT), "--redis-port", str(REDIS_PORT), "--no-dashboard",
         "--run-dir", str(tmp_path / "run")],  # a Redis of its own, not .run's
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    stop = threading.Event()
    failures: list[str] = []

    def load() -> None:
        body = {"model": "large", "messages": [{"role": "user", "content": "tell a story"}],
                "max_tokens": 48, "temperature": 0.7}
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                resp = client.post(f"{url}/v1/chat/completions", json=body)
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")

    workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        _wait("sluice serve to be ready", 600,
              lambda: proc.poll() is None and _replicas(url) == 1
              or pytest.fail((tmp_path / "serve.log").read_text()[-3000:])
              if proc.poll() is not None else _replicas(url) == 1)
        for w in workers:
            w.start()
        _wait("a second large replica", 300, lambda: (_replicas(url) or 0) >= 2)
        stop.set()
        for w in workers:
            w.join(timeout=180)
        _wait("large back to one replica", 300, lambda: _replicas(url) == 1)
        assert not failures, failures[:3]  # scaling cost no request
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
