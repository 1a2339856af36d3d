"""The README's first commands, exactly as written: `make serve` with the default profile on
the default ports, in a process tree of its own as a terminal would start it; then the
README's own snippets (read out of README.md, so the docs cannot drift from what is tested);
then Ctrl-C to the process group, after which nothing it started is left and its ports are
free. Runs first (conftest orders it), before the shared stack takes the machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
API, PROXY, REDIS, DASHBOARD = 8000, 8001, 6379, 8265  # the defaults the README documents
READY_TIMEOUT_S = 600
SNIPPET_TIMEOUT_S = 120


def readme_block(tag: str) -> tuple[str, str]:
    """(language, code) of the fenced block right after `<!-- tested: TAG ... -->`."""
    match = re.search(r"<!-- tested: " + re.escape(tag) + r"\b[^>]*-->\s*\n```(\w+)\n(.*?)\n```",
                      README.read_text(), re.DOTALL)
    assert match, f"README.md has no block tagged {tag!r}"
    return match.group(1), match.group(2) + "\n"


def _first_command() -> list[str]:
    first = re.search(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    assert first, "README.md has no command block"
    line = next(ln for ln in first.group(1).splitlines() if "serve" in ln)
    return line.split("#")[0].split()


def _fresh_env() -> dict[str, str]:
    """What a user's shell would have: nothing of this pytest run's make, Ray or stack."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS", "RAY_", "VLLM_", "LMCACHE_"))
           and k not in {"PYTHONHASHSEED", "HF_HUB_OFFLINE"}}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:160]
    except psutil.Error:
        return f"<pid {proc.pid}>"


def _wait_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"make serve exited:\n{log.read_text()[-4000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{API}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"make serve not ready in {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=SNIPPET_TIMEOUT_S, check=False)


def test_readme_commands_work_as_written(tmp_path: Path) -> None:
    command = _first_command()
    assert command == ["make", "serve"], command
    busy = [p for p in (API, PROXY, REDIS, DASHBOARD) if not _port_free(p)]
    assert not busy, f"ports the README uses are taken before the test: {busy}"
    env = _fresh_env()
    log = tmp_path / "make-serve.log"
    with log.open("wb") as out:
        # a process group of its own, as a shell gives a foreground job; Ctrl-C is SIGINT to it
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        _wait_ready(proc, log)
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(_cmdline(p) for p in tree)
        assert "redis-server" in names and "raylet" in names and "gcs_server" in names

        lang, curl = readme_block("quickstart-curl")
        done = _run(["bash", "-euo", "pipefail", "-c", curl], env)
        assert lang == "bash" and done.returncode == 0, done.stderr
        assert '"object": "chat.completion"' in done.stdout, done.stdout[:500]

        lang, script = readme_block("quickstart-python")
        done = _run([sys.executable, "-c", script], env)
        assert lang == "python" and done.returncode == 0, done.stderr[-3000:]
        assert "CompletionUsage(" in done.stdout and "completion_tokens=16" in done.stdout, \
            done.stdout[-1000:]

        lang, script = readme_block("messages-python")  # Anthropic's SDK, same server
        done = _run([sys.executable, "-c", script], env)
        assert lang == "python" and done.returncode == 0, done.stderr[-3000:]
        assert 0 < int(done.stdout.split()[-1]) <= 64, done.stdout[-1000:]  # output_tokens

        lang, ray_tools = readme_block("quickstart-ray")
        done = _run(["bash", "-euo", "pipefail", "-c", ray_tools], env)
        assert lang == "bash" and done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
        for deployment in ("SluiceIngress", "SluiceLLMServer:small", "SluiceLLMServer:large"):
            assert deployment in done.stdout, done.stdout[-3000:]
        assert "status: RUNNING" in done.stdout and "Resources" in done.stdout, done.stdout

        text = log.read_text()
        assert f"http://127.0.0.1:{API}/v1" in text, "the banner never printed the endpoint"
        assert f"Ray dashboard: http://127.0.0.1:{DASHBOARD}" in text, text[-2000:]
        assert httpx.get(f"http://127.0.0.1:{DASHBOARD}/", timeout=10).status_code == 200
        # Serve's own proxy: a second entrance, apart from the API's port
        proxied = httpx.get(f"http://127.0.0.1:{PROXY}/v1/models", timeout=30)
        assert proxied.status_code == 200 and {m["id"] for m in proxied.json()["data"]} >= {
            "small", "large", "auto"}

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=120)
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, [_cmdline(p) for p in alive]
        busy = [p for p in (API, PROXY, REDIS, DASHBOARD) if not _port_free(p)]
        assert not busy, f"ports still taken after Ctrl-C: {busy}"
        assert "[sluice] shutting down Serve and Ray" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for p in tree:
            if p.is_running():
                p.kill()
