"""Separate network hosts on one machine, for the multi-host bring-up test.

Each host is a network namespace with its own address on a private bridge the test makes
(10.213.7.0/24; the bridge's own address, .254, is where the test's client and Ray's
launcher sit), running its own `sshd` as PID 1 of its own PID namespace, in a mount namespace
where it has a /tmp and a home of its own (root's home is a path under /run that every host
has, each with its own contents, through a private /etc/passwd). What the hosts share is the
disk: the repository and its venv (as an NFS share would be), /usr and /etc. So `ray stop` or
`ray down` on one host cannot see another's processes, Ray's /tmp/ray and the launcher's state
files are per host, and everything one host says to another crosses the bridge.

Needs root (namespaces, mounts, links) and iproute2, OpenSSH's server and rsync.
"""

from __future__ import annotations

import os
import shlex
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
RUN = Path("/run")  # per-run mount points: a tmpfs, outside /tmp, /home and the repository


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def _pid_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


@dataclass
class Host:
    """One test host: its network namespace, address, private files and sshd."""

    name: str  # the network namespace
    address: str
    root: Path  # its private files: home, tmp, sshd's config and keys
    starter: subprocess.Popen | None = None  # `ip netns exec ... unshare ... sshd`
    sshd_pid: int = 0  # sshd, PID 1 of the host's PID namespace (seen from outside)
    pid_ns: str = ""

    def processes(self) -> list[psutil.Process]:
        """Every process in this host's PID namespace except its sshd."""
        if not self.pid_ns:
            return []
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.pid != self.sshd_pid and _pid_namespace(proc.pid) == self.pid_ns:
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

    def kill(self) -> None:
        """Kill the host's PID 1: the kernel then kills everything in its namespace."""
        if self.sshd_pid:
            try:
                os.kill(self.sshd_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.sshd_pid = 0  # killed once: a later kill() must not hit a reused pid
        if self.starter is not None:
            if self.starter.poll() is None:
                try:
                    os.killpg(self.starter.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.starter.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass


@dataclass
class HostNetwork:
    """Hosts on one bridge; `close()` ends every process in them and removes the
    namespaces, links and mount points, whatever state `open()` got to."""

    base: Path
    shared: list[Path] = field(default_factory=list)  # seen by every host at the same path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"slbr{self.tag}"

    @property
    def run_dir(self) -> Path:
        return RUN / f"sluice-mh-{self.tag}"

    @property
    def home(self) -> str:
        """root's home on every host (each mounts its own contents there)."""
        return str(self.run_dir / "home")

    def open(self, count: int, key: Path) -> list[Host]:
        (self.run_dir / "home").mkdir(parents=True)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{GATEWAY}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index in range(1, count + 1):
            self._host(index, key)
        for host in self.hosts:
            _wait_port(host.address, 22, 30)
        return self.hosts

    def _host(self, index: int, key: Path) -> None:
        name = f"slh{index}-{self.tag}"
        outside, inside = f"slv{index}{self.tag}", f"slp{index}{self.tag}"
        host = Host(name=name, address=f"{SUBNET}.{index}", root=self.base / name)
        self.hosts.append(host)  # from here on, close() removes whatever was made
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
        config = shlex.quote(str(host.root / "sshd_config"))
        script = " && ".join(self._mounts(host)) + f" && exec /usr/sbin/sshd -D -e -f {config}"
        with (host.root / "sshd.log").open("wb") as log:
            host.starter = subprocess.Popen(
                ["ip", "netns", "exec", name, "unshare", "--pid", "--fork", "--mount", "--uts",
                 "--mount-proc", "--propagation", "private", "bash", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # unshare's child: sshd, PID 1 in its namespace
            kids = psutil.Process(host.starter.pid).children(recursive=True)
            sshd = [p for p in kids if p.name() == "sshd"]
            if sshd:
                host.sshd_pid = sshd[0].pid
                host.pid_ns = _pid_namespace(sshd[0].pid)
                return
            if host.starter.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not start in {name}: "
                           f"{(host.root / 'sshd.log').read_text()[-2000:]}")

    def _mounts(self, host: Host) -> list[str]:
        """The host's private /tmp, home and /etc/passwd, in its mount namespace. Its files
        (and the shared paths: the repository and its venv) may themselves lie under /tmp,
        as in a CI clone: the machine's /tmp is first held at a path outside it, and those
        paths are mounted back from there once the private /tmp covers it."""
        hold = self.run_dir / "hold" / host.name
        hold.mkdir(parents=True, exist_ok=True)

        def source(path: Path) -> str:
            path = path.resolve()
            held = (hold / path.relative_to("/tmp")) if path.is_relative_to("/tmp") else path
            return shlex.quote(str(held))

        steps = [f"hostname {host.name}", f"mount --rbind /tmp {shlex.quote(str(hold))}",
                 f"mount --bind {source(host.root / 'tmp')} /tmp",
                 f"mount --bind {source(host.root / 'home')} {shlex.quote(self.home)}",
                 f"mount --bind {source(host.root / 'passwd')} /etc/passwd"]
        for path in sorted({p.resolve() for p in [*self.shared, host.root]}):
            if path.is_relative_to("/tmp"):
                quoted = shlex.quote(str(path))
                steps.append(f"mkdir -p {quoted} && mount --rbind {source(path)} {quoted}")
        return steps

    def _files(self, host: Host, key: Path) -> None:
        """A fresh home (with Debian's skeleton: its .profile reads .bashrc in the
        launcher's login shells), a passwd naming it, host keys and an sshd config."""
        for sub in ("tmp", "home", "etc"):
            (host.root / sub).mkdir(parents=True, exist_ok=True)
        (host.root / "tmp").chmod(0o1777)
        for skel in Path("/etc/skel").glob(".*"):
            shutil.copy(skel, host.root / "home" / skel.name)
        lines = []
        for line in Path("/etc/passwd").read_text().splitlines():
            parts = line.split(":")
            if parts[0] == "root":
                parts[5] = self.home
            lines.append(":".join(parts))
        (host.root / "passwd").write_text("\n".join(lines) + "\n")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(host.root / "etc/host_key")], check=True, timeout=30)
        shutil.copy(f"{key}.pub", host.root / "etc/authorized_keys")
        (host.root / "sshd_config").write_text("\n".join([
            f"ListenAddress {host.address}", "Port 22",
            f'HostKey "{host.root}/etc/host_key"',
            f'AuthorizedKeysFile "{host.root}/etc/authorized_keys"',
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            f'PidFile "{host.root}/sshd.pid"', "MaxSessions 50", "MaxStartups 50",
            "Subsystem sftp internal-sftp", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory

    def close(self) -> list[str]:
        """Kill each host's PID 1, remove the namespaces, the bridge and the mount points.
        Returns what was still running in a host when its PID 1 was killed... and stayed."""
        problems = []
        for host in self.hosts:
            host.kill()
        for host in self.hosts:
            deadline = time.monotonic() + 20
            while host.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
            left = host.describe(host.processes())
            if left:
                problems.append(f"{host.name}: {left}")
            _ip("netns", "delete", host.name, check=False)
        _ip("link", "delete", self.bridge, check=False)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return problems


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


def remove_leftovers(runs: Path) -> None:
    """What an earlier, killed run of this test left under `runs` (its `multihost-*`
    folders) and on the machine: its hosts (their sshds were PID 1 of their namespaces:
    killing them ends everything in those), namespaces, bridge and mount points. Only that
    run's, found by the tags of its hosts' folders, not another checkout's."""
    folders = list(runs.glob("multihost-*"))
    tags = {host.name.rsplit("-", 1)[-1] for folder in folders
            for host in (folder / "hosts").glob("slh*-*")}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "sshd" in cmdline and f"{runs}/multihost-" in cmdline:
            try:
                proc.kill()
            except psutil.Error:
                pass
    for name in _ip("netns", "list", check=False).stdout.split():
        if name.startswith("slh") and name.rsplit("-", 1)[-1] in tags:
            _ip("netns", "delete", name, check=False)
    for tag in tags:
        _ip("link", "delete", f"slbr{tag}", check=False)
        shutil.rmtree(RUN / f"sluice-mh-{tag}", ignore_errors=True)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
