"""A local redis-server process for single-machine runs (`make serve`, tests, benchmarks).

In a cluster Redis runs on the head node (cluster.yaml) or is an external URL; this class is
only for the machine you are on.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class RedisServerError(RuntimeError):
    pass


PR_SET_PDEATHSIG = 1
# loaded here, not in the forked child: the child of a threaded parent only calls into it
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent process dies (Linux only)."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalRedisServer:
    """Start redis-server on loopback with its data under run_dir; stop it on exit."""

    def __init__(self, run_dir: Path, port: int = 6379, appendonly: bool = True) -> None:
        self.run_dir = run_dir
        self.port = port
        self.appendonly = appendonly
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 10.0) -> LocalRedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server not found; run `make setup` (it installs it).")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.run_dir),
             "--appendonly", "yes" if self.appendonly else "no", "--save", "",
             "--protected-mode", "yes"],
            stdout=(self.run_dir / "redis.log").open("ab"), stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in a terminal reaches the whole foreground process group,
            # and Redis must outlive the ingress's last ledger flush; stop() ends it, and it
            # ends with its parent if that dies without calling stop()
            start_new_session=True, preexec_fn=_end_with_parent,  # noqa: PLW1509
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RedisServerError(f"redis-server exited; see {self.run_dir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RedisServerError(f"redis-server did not listen on {self.port} in {timeout_s} s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None

    def __enter__(self) -> LocalRedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
