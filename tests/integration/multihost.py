"""Separate network hosts on one machine, for the multi-host bring-up test.

Each host is a network namespace with its own address on a private bridge the test makes
(10.213.7.0/24; the bridge's own address, .254, is where the test's client and Ray's
launcher sit), running its own `sshd` as PID 1 of its own PID namespace, in a mount namespace
where it has a /tmp and a home of its own (root's home is /home/ray there, through a private
/etc/passwd). What the hosts share is the disk: /work (the repository and its venv, as an NFS
share would be), /usr and /etc. So `ray stop` or `ray down` on one host cannot see another's
processes, Ray's /tmp/ray and the launcher's state files are per host, and everything one host
says to another crosses the bridge.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SUBNET = "10.213.7"
GATEWAY = f"{SUBNET}.254"
HOME = "/home/ray"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def _pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


@dataclass
class Host:
    name: str  # the network namespace
    address: str
    root: Path  # its private files: home, tmp, sshd's config and keys
    sshd: "_Pid | None" = None
    pid_ns: str = ""

    def processes(self) -> list[psutil.Process]:
        """Every process in this host's PID namespace except its sshd (PID 1 there)."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if (proc.pid != self.sshd.pid and
                        _pid_namespace(proc.pid) == self.pid_ns):
                    found.append(proc)
            except (OSError, psutil.Error):
                continue
        return found

    def describe(self, procs: list[psutil.Process]) -> list[str]:
        out = []
        for proc in procs:
            try:
                out.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
            except psutil.Error:
                continue
        return out


@dataclass
class HostNetwork:
    """Two (or more) hosts on one bridge; `close()` ends every process in them and
    removes the namespaces and links."""

    base: Path
    shared: list[Path] = field(default_factory=list)  # seen by every host at the same path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"slbr{self.tag}"

    def open(self, count: int, key: Path) -> list[Host]:
        _remove_leftovers()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index in range(1, count + 1):
            self.hosts.append(self._host(index, key))
        for host in self.hosts:
            _wait_port(host.address, 22, 30)
        return self.hosts

    def _host(self, index: int, key: Path) -> Host:
        name = f"slh{index}-{self.tag}"
        outside, inside = f"slv{index}{self.tag}", f"slp{index}{self.tag}"
        host = Host(name=name, address=f"{SUBNET}.{index}", root=self.base / name)
        _ip("netns", "add", name)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", name)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        for args in (("addr", "add", f"{host.address}/24", "dev", inside),
                     ("link", "set", inside, "up"), ("link", "set", "lo", "up"),
                     # a default route, as a real host has: Ray finds its own address by
                     # the route to the outside (no packet leaves; nothing forwards it)
                     ("route", "add", "default", "via", GATEWAY)):
            _ip("-n", name, *args)
        self._files(host, key)
        script = " && ".join(self._mounts(host)) + (
            f" && exec /usr/sbin/sshd -D -e -f {host.root}/sshd_config")
        log = (host.root / "sshd.log").open("wb")
        host.sshd = subprocess.Popen(
            ["ip", "netns", "exec", name, "unshare", "--pid", "--fork", "--mount", "--uts",
             "--mount-proc", "--propagation", "private", "bash", "-c", script],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # unshare's child: sshd, PID 1 in its namespace
            kids = psutil.Process(host.sshd.pid).children(recursive=True)
            sshd = [p for p in kids if p.name() == "sshd"]
            if sshd:
                host.sshd = _Pid(sshd[0].pid, host.sshd)
                host.pid_ns = _pid_namespace(sshd[0].pid)
                return host
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not start in {name}: "
                           f"{(host.root / 'sshd.log').read_text()[-2000:]}")

    def _mounts(self, host: Host) -> list[str]:
        """The host's private /tmp, /home and /etc/passwd, in its mount namespace. Its files
        (and the shared paths: the repository and its venv) may themselves lie under /tmp,
        as in a CI clone: the machine's /tmp is first held at a path outside it, and those
        paths are mounted back from there once the private /tmp covers it."""
        hold = Path("/run") / f"sluice-mh-{self.tag}" / host.name
        hold.mkdir(parents=True, exist_ok=True)

        def source(path: Path) -> str:
            path = path.resolve()
            return (f"{hold}/{path.relative_to('/tmp')}" if path.is_relative_to("/tmp")
                    else str(path))

        steps = [f"hostname {host.name}", f"mount --bind /tmp {hold}",
                 f"mount --bind {source(host.root / 'tmp')} /tmp",
                 f"mount --bind {source(host.root / 'home')} {Path(HOME).parent}",
                 f"mount --bind {source(host.root / 'passwd')} /etc/passwd"]
        for path in {p.resolve() for p in [*self.shared, host.root]}:
            if path.is_relative_to("/tmp"):
                steps.append(f"mkdir -p {path} && mount --bind {source(path)} {path}")
        return steps

    @staticmethod
    def _files(host: Host, key: Path) -> None:
        for sub in ("tmp", "home/ray", "etc"):
            (host.root / sub).mkdir(parents=True, exist_ok=True)
        (host.root / "tmp").chmod(0o1777)
        home = host.root / "home/ray"
        for skel in Path("/etc/skel").glob(".*"):  # .profile reads .bashrc in a login shell
            shutil.copy(skel, home / skel.name)
        lines = []
        for line in Path("/etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == "root":
                parts[5] = HOME
            lines.append(":".join(parts))
        (host.root / "passwd").write_text("\n".join(lines) + "\n")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(host.root / "etc/host_key")], check=True, timeout=30)
        shutil.copy(f"{key}.pub", host.root / "etc/authorized_keys")
        (host.root / "sshd_config").write_text("\n".join([
            f"ListenAddress {host.address}", "Port 22",
            f"HostKey {host.root}/etc/host_key",
            f"AuthorizedKeysFile {host.root}/etc/authorized_keys",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            f"PidFile {host.root}/sshd.pid", "MaxSessions 50", "MaxStartups 50",
            "AcceptEnv LANG", "Subsystem sftp internal-sftp", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)

    def close(self) -> list[str]:
        """Kill each host's PID 1 (the kernel then kills everything in its namespace),
        remove the namespaces and the bridge. Returns what could not be removed."""
        problems = []
        for host in self.hosts:
            if host.sshd is not None:
                host.sshd.kill()
        for host in self.hosts:
            deadline = time.monotonic() + 20
            while host.pid_ns and host.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
            left = host.describe(host.processes()) if host.pid_ns else []
            if left:
                problems.append(f"{host.name}: {left}")
            _ip("netns", "delete", host.name, check=False)
        _ip("link", "delete", self.bridge, check=False)
        shutil.rmtree(Path("/run") / f"sluice-mh-{self.tag}", ignore_errors=True)
        return problems


class _Pid:
    """sshd inside the namespace, killed by PID from outside; also reaps `unshare`."""

    def __init__(self, pid: int, wrapper: subprocess.Popen) -> None:
        self.pid = pid
        self.wrapper = wrapper

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.wrapper.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.wrapper.kill()


def _wait_port(address: str, port: int, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    while True:
        try:
            with socket.create_connection((address, port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _remove_leftovers() -> None:
    """Hosts, namespaces and bridges an earlier, killed run of this test left behind (its
    sshds were PID 1 of their namespaces: killing them ends everything in those)."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "sshd" in cmdline and "/.run/multihost-" in cmdline:
            try:
                proc.kill()
            except psutil.Error:
                pass
    names = _ip("netns", "list", check=False).stdout.split()
    for name in names:
        if name.startswith("slh") and "-" in name:
            _ip("netns", "delete", name, check=False)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith("slbr"):
            _ip("link", "delete", name, check=False)
