"""A hosted model on this machine: vLLM's own OpenAI server standing in for a provider,
behind the chaos harness's TCP fault proxy, and a `sluice serve` of its own whose catalog
has `small` (on its own engine), `hosted` (a provider model pointing at the proxy, with
the failover chain `[small]`; the cascades `mix-accept` and `mix-escalate` put it behind
`small`) and `claude` (the same server's Anthropic-compatible
`/v1/messages`, called as Anthropic's API, behind the HTTP fault proxy that can answer 429s
in its place; its chain is `[small]` too). Used by `tests/integration/test_providers_live.py` and
`loadtests/provider_bench.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx
import yaml

from loadtests.chaos.fault_proxy import FaultProxy
from loadtests.chaos.http_faults import HttpFaults

ROOT = Path(__file__).resolve().parents[1]
PROVIDER_KEY = "sk-provider"  # the stand-in provider's API key (vLLM's --api-key)
KEY_ENV = "SLUICE_PROVIDER_STANDIN_KEY"


@dataclass(frozen=True)
class Settings:
    port: int = 8862  # Serve's own proxy takes the next one (8863)
    redis_port: int = 6432
    vllm_port: int = 8864
    proxy_port: int = 8865
    http_faults_port: int = 8866  # in front of the same server, for `claude`
    response_cache: bool = False  # the exact-match cache (the bench measures without it)
    first_byte_s: float = 3.0  # hosted's first_token_timeout_s
    threshold: int = 2  # ingress.failover_threshold
    cooldown_s: float = 20.0  # ingress.failover_cooldown_s
    prices: dict[str, float] = field(default_factory=lambda: {"input_per_1m": 1.0,
                                                              "output_per_1m": 4.0})


def _catalog(tmp: Path, s: Settings) -> Path:
    shipped = yaml.safe_load((ROOT / "platform/catalog.yaml").read_text())
    small = next(m for m in shipped["models"] if m["name"] == "small")
    small["source"] = str(ROOT / small["source"])
    hosted = {"name": "hosted", "tier": "large", "context_length": 2048,
              "description": "vLLM's own server standing in for a hosted provider",
              "provider": {"base_url": f"http://127.0.0.1:{s.proxy_port}/v1",
                           "model": "their-small", "api_key_env": KEY_ENV,
                           "first_token_timeout_s": s.first_byte_s},
              "failover": ["small"],
              "pricing": {"mode": "tokens", "tokens": dict(s.prices)}}
    claude = {**hosted, "name": "claude",
              "description": "vLLM's /v1/messages standing in for Anthropic's API",
              "provider": {"api": "anthropic", "auth": "bearer",  # vLLM's --api-key: bearer
                           "base_url": f"http://127.0.0.1:{s.http_faults_port}/v1",
                           "model": "their-small", "api_key_env": KEY_ENV,
                           "first_token_timeout_s": s.first_byte_s}}
    path = tmp / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": [small, hosted, claude]}))
    return path


def _manual(reason: str) -> dict[str, str]:
    return {"method": "manual", "reason": reason}


def _routes(tmp: Path) -> Path:
    """Cascades of the local `small` and the hosted model (the common cost play), whose
    logprob judges (on small's own answer) accept or escalate every request."""
    pair = {"small": "small", "large": "hosted"}
    routes = [{"name": "mix-accept", **pair, "judge": {
                   "kind": "logprob", "threshold": 0.0, "provenance": _manual("accept all")}},
              {"name": "mix-escalate", **pair, "judge": {
                   "kind": "logprob", "threshold": 1.0,
                   "provenance": _manual("escalate all")}}]
    path = tmp / "routes.yaml"
    path.write_text(yaml.safe_dump({"routes": routes}))
    return path


def _profile(tmp: Path, s: Settings) -> Path:
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile["routing"] = str(_routes(tmp))
    profile["catalog"] = str(_catalog(tmp, s))
    profile["models"] = {"small": profile["models"]["small"]}  # hosted runs elsewhere
    profile["ingress"] = {**profile["ingress"], "failover_threshold": s.threshold,
                          "failover_cooldown_s": s.cooldown_s}
    profile["dashboard"] = {"enabled": False}
    profile["semantic_cache"] = {"enabled": False}
    profile["response_cache"] = {**profile.get("response_cache", {}),
                                 "enabled": s.response_cache}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class ProviderStack:
    """Start with `with ProviderStack(Settings()) as stack:`; fails (RuntimeError) with the
    logs' tails if a process exits or is not ready in `ready_timeout_s`."""

    def __init__(self, settings: Settings, ready_timeout_s: float = 600) -> None:
        self.settings, self._ready_timeout_s = settings, ready_timeout_s
        self.tmp = Path(tempfile.mkdtemp(prefix="sluice-providers-"))
        self.url = f"http://127.0.0.1:{settings.port}"
        self.provider_url = f"http://127.0.0.1:{settings.vllm_port}"  # direct, no proxy
        self.proxy: FaultProxy | None = None
        self.http_faults: HttpFaults | None = None
        self._procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def _spawn(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._procs.append((proc, log))

    def _wait(self, url: str) -> None:
        deadline = time.monotonic() + self._ready_timeout_s
        while True:
            for proc, log in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{log.name}: exited\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tails = "\n".join(log.read_text()[-2000:] for _, log in self._procs)
                raise RuntimeError(f"{url} not ready in {self._ready_timeout_s:.0f} s\n{tails}")
            time.sleep(2)

    def start(self) -> Self:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        engine_env = {**env, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONHASHSEED": "0",
                      "HF_HUB_OFFLINE": "1"}
        self._spawn([sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                     "--model", str(ROOT / "models/demo/small"),
                     "--served-model-name", "their-small", "--host", "127.0.0.1",
                     "--port", str(s.vllm_port), "--dtype", "float32", "--enforce-eager",
                     "--max-model-len", "2048", "--gpu-memory-utilization", "0.2",
                     "--api-key", PROVIDER_KEY], engine_env, self.tmp / "vllm.log")
        self._spawn([sys.executable, "-m", "sluice.cli", "serve",
                     "--profile", str(_profile(self.tmp, s)), "--port", str(s.port),
                     "--redis-port", str(s.redis_port), "--no-dashboard",
                     # a Redis of its own: not the ledger an earlier stack left in .run
                     "--run-dir", str(self.tmp / "run")],
                    {**env, KEY_ENV: PROVIDER_KEY}, self.tmp / "serve.log")
        self.proxy = FaultProxy(("127.0.0.1", s.proxy_port),
                                ("127.0.0.1", s.vllm_port)).start()
        self.http_faults = HttpFaults(("127.0.0.1", s.http_faults_port),
                                      self.provider_url).start()
        self._wait(f"{self.provider_url}/health")
        self._wait(f"{self.url}/readyz")
        return self

    def kill_provider(self) -> float:
        """SIGKILL the stand-in provider's whole process group (vLLM's server and its engine
        core), as a crashed host would end; returns time.monotonic() of the kill. For the
        last test or bench part: the provider does not come back."""
        proc, _ = self._procs[0]  # the vLLM server, spawned first
        os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=30)
        return killed_at

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.http_faults is not None:
            self.http_faults.stop()
        for proc, _ in reversed(self._procs):
            _stop(proc)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
