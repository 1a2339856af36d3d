"""A real multi-host bring-up with Ray's cluster launcher: `ray up` of the on-premises config
over SSH, Sluice deployed on it, served through the head, and `ray down`.

The hosts (tests/integration/multihost.py) are network namespaces on a bridge the test makes,
each with its own sshd as PID 1 of its own PID namespace and its own /tmp and home. The
launcher config is platform/clusters/onprem.yaml with what this machine needs changed and
nothing else (see `_launcher_config`): its three hosts' addresses (a head and two workers,
as the file ships) and the test's SSH key, the CPU cluster profile, a shared venv in place of
installing `sluice[gpu]` (no network, no GPU: the hosts share this disk, as an NFS-mounted
venv would be), and one CPU per host for engines, as one-GPU boxes would have: small's two
replicas and large's one take a host each, so small runs on two hosts.

Then, through the head's endpoint and the official `openai` client: a chat answered by a
replica on a worker host (Serve's own replica table says where `x-sluice-replica` runs); a
long prompt computed on one host and served from the head's Redis KV tier on the other; the
ledger in the head's Redis holding both. Then a worker host with one of small's replicas dies
under load (node removal: what it held before a first byte is retried on the other host,
a stream it had started ends with an error event). The teardown is `make cluster-down`'s: the head's
Redis stopped, then `ray down`, after which no process is left on any host. Figures it
prints go to BENCHMARKS.md ("Multi-host bring-up").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).parent))
from multihost import Host, HostNetwork, remove_leftovers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500), pytest.mark.alone]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROFILE = "platform/profiles/multihost.yaml"
KV_CHUNK = 64
UP_BOUND_S, READY_BOUND_S, DOWN_BOUND_S = 420, 720, 120
# node loss: open-loop load on small at this rate (req/s) for this long, the host killed at
# (6 req/s keeps several requests in flight, so the router spreads them over both of small's
# replicas: one at a time, prompts with no shared prefix all go to one replica)
NODE_LOSS_RATE, NODE_LOSS_S, NODE_LOSS_AT_S = 6.0, 40.0, 10.0
KILL_RECOVERY_S = 5.0  # as the chaos test's kills: the requests in flight end within 2 s


def _profile(platform: Path) -> None:
    """The CPU cluster profile with what a 2-core machine needs: no semantic cache (its
    embedding model in the ingress), small KV chunks (the test's prompts are ~600 tokens),
    a first-token bound that three engines starting on two cores do not hit."""
    data = yaml.safe_load((platform / "profiles/cpu-cluster.yaml").read_text())
    data["name"] = "multihost"
    data["semantic_cache"] = {"enabled": False}
    data["kv_tier"] = {"enabled": True, "chunk_size": KV_CHUNK}
    data["ingress"] = {**data["ingress"], "first_token_timeout_s": 120}
    (platform / "profiles/multihost.yaml").write_text(yaml.safe_dump(data))


def _launcher_config(work: Path, hosts: list[Host], key: Path, name: str) -> Path:
    config = yaml.safe_load((ROOT / "platform/clusters/onprem.yaml").read_text())
    head, *workers = hosts
    config["cluster_name"] = name
    assert len(config["provider"]["worker_ips"]) == config["min_workers"] == len(workers)
    config["provider"].update(head_ip=head.address, worker_ips=[w.address for w in workers])
    config["auth"] = {"ssh_user": "root", "ssh_private_key": str(key)}
    mounts = config["file_mounts"]
    assert set(mounts) == {"~/sluice/platform", "~/sluice/models/demo", "~/sluice/dist"}
    config["file_mounts"] = {"~/sluice/platform": str(work / "platform"),
                             "~/sluice/models/demo": str(ROOT / "models/demo")}
    # no `pip install sluice[gpu]` from the archive: this repository's venv, on the shared disk
    config["setup_commands"] = [(
        "grep -q 'sluice-venv' ~/.bashrc || "
        f"echo 'export PATH=\"{BIN}:$PATH\"  # sluice-venv' >> ~/.bashrc")]

    def adapt(commands: list[str]) -> list[str]:
        out = []
        for command in commands:
            command = command.replace("platform/profiles/gpu-cluster.yaml", PROFILE)
            if "ray start" in command:
                command += " --num-cpus=1 --disable-usage-stats"
            out.append(command)
        return out

    config["head_start_ray_commands"] = adapt(config["head_start_ray_commands"])
    config["worker_start_ray_commands"] = adapt(config["worker_start_ray_commands"])
    path = work / "onprem-test.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_", "SLUICE_"))}
    # the launcher's own home: what it writes there (SSH control sockets, config cache)
    # stays out of this machine's real one
    # (`make cluster-up` runs Ray's v1 autoscaler for a `local` config: see the Makefile)
    return {**env, "HOME": str(work / "launcher-home"), "PATH": f"{BIN}:{env['PATH']}",
            "RAY_USAGE_STATS_ENABLED": "0"}


def _launcher(argv: list[str], env: dict, bound_s: float, log: Path) -> float:
    """Run a launcher command (its own process group: on a timeout, `ray up` and its ssh
    children go too), its output appended to the log; fail with the log's tail."""
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=bound_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            code = f"no exit within {bound_s:.0f} s"
    assert code == 0, f"{argv[:3]}: {code}\n{log.read_text()[-4000:]}"
    return time.monotonic() - started


def _serve_replicas(dashboard: str) -> dict[str, dict]:
    """Serve's own table of replicas (its REST API): id -> node address, state."""
    try:
        apps = httpx.get(f"{dashboard}/api/serve/applications/", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}
    found = {}
    for app in (apps.get("applications") or {}).values():
        for dep_name, dep in (app.get("deployments") or {}).items():
            for rep in dep.get("replicas") or []:
                found[rep["replica_id"]] = {"deployment": dep_name, "node": rep.get("node_ip"),
                                            "state": rep.get("state")}
    return found


def _ready(api: str) -> bool:
    try:
        return httpx.get(f"{api}/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, shared_stack_stopped: None) -> Iterator[dict]:
    if os.geteuid() != 0:  # CI runs as root; a developer's own account may not
        why = "needs root: network, PID and mount namespaces, links, mounts"
        if os.environ.get("SLUICE_CI"):  # .ci/run: a skipped bring-up must not pass silently
            pytest.fail(why)
        pytest.skip(why)
    for tool in ("ip", "ssh", "ssh-keygen", "rsync", "/usr/sbin/sshd"):
        assert shutil.which(tool), f"{tool} missing: `make test` installs it (host-tools)"
    runs = ROOT / ".run"
    remove_leftovers(runs)  # an earlier run of this test that was killed
    # outside /tmp where it can be: each host has a /tmp of its own
    work = runs / f"multihost-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    (work / "launcher-home").mkdir()
    shutil.copytree(ROOT / "platform", work / "platform")
    _profile(work / "platform")
    key = work / "ssh_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, timeout=30)
    net = HostNetwork(work / "hosts", shared=[ROOT, BIN.parent])
    name = f"sluice-mh-{net.tag}"
    log = tmp_path_factory.mktemp("multihost") / "launcher.log"
    env = _env(work)
    state = {"work": work, "env": env, "log": log, "figures": {}}
    try:
        hosts = net.open(3, key)
        config = _launcher_config(work, hosts, key, name)
        state.update(hosts=hosts, config=config, head=hosts[0], workers=hosts[1:],
                     api=f"http://{hosts[0].address}:8000",
                     dashboard=f"http://{hosts[0].address}:8265")
        started = time.monotonic()
        state["figures"]["ray_up_s"] = round(_launcher(  # the README's command
            ["make", "-s", "cluster-up", f"CLUSTER={config}"], env, UP_BOUND_S, log), 1)
        state["up_started"] = started
        yield state
    finally:
        problems = net.close()  # whatever the test left: every process of every host ends
        for host in net.hosts:  # then each host's Ray logs, kept with pytest's files
            sessions = sorted((host.root / "tmp/ray").glob("session_2*"))
            if sessions and (sessions[-1] / "logs").is_dir():
                try:
                    shutil.copytree(sessions[-1] / "logs", log.parent / f"ray-logs-{host.name}",
                                    symlinks=True, dirs_exist_ok=True)
                except OSError as exc:  # a partial copy is still worth keeping
                    print(f"{host.name}: Ray's logs copied in part: {exc}")
        print(f"logs: {log.parent}; figures: {json.dumps(state['figures'])}")
        shutil.rmtree(work, ignore_errors=True)
        assert not problems, problems


def _engines(replicas: dict[str, dict], model: str) -> dict[str, str]:
    """replica id -> node address of the model's RUNNING engine replicas."""
    return {rid: r["node"] for rid, r in replicas.items()
            if r["deployment"].endswith(f":{model}") and r["state"] == "RUNNING"}


def test_ray_up_brings_up_every_host_and_serves_from_a_worker(cluster: dict) -> None:
    """One CPU per host for engines: small's two replicas and large's one take a host each,
    whatever order Serve places them in, so small runs on two hosts, one of them a worker."""
    api, dashboard = cluster["api"], cluster["dashboard"]
    head = cluster["head"]
    deadline = time.monotonic() + READY_BOUND_S
    replicas: dict[str, dict] = {}
    while time.monotonic() < deadline:
        replicas = _serve_replicas(dashboard)
        small, large = _engines(replicas, "small"), _engines(replicas, "large")
        if len(set(small.values())) == 2 and large and _ready(api):
            break
        time.sleep(3)
    else:
        out = subprocess.run([str(BIN / "ray"), "exec", str(cluster["config"]),
                              "ray status; tail -n 30 /tmp/ray/session_latest/logs/monitor.*"],
                             env=cluster["env"], capture_output=True, text=True, timeout=120,
                             check=False)
        pytest.fail(f"not every engine RUNNING within {READY_BOUND_S} s: {replicas}\n"
                    f"{out.stdout[-4000:]}")
    cluster["figures"]["up_to_ready_s"] = round(time.monotonic() - cluster["up_started"], 1)
    cluster["replicas"] = replicas
    client = OpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0, timeout=120)
    first = client.chat.completions.create(  # the first answered request since `ray up`
        model="small", max_tokens=4, messages=[{"role": "user", "content": "first"}],
        extra_headers={"cache-control": "no-store"})
    assert first.choices[0].message.content is not None
    cluster["figures"]["up_to_first_answer_s"] = round(
        time.monotonic() - cluster["up_started"], 1)
    hosts_of_small = set(_engines(replicas, "small").values())
    assert hosts_of_small - {head.address}, "no small replica on a worker host"
    by_node: dict[str, list[float]] = {node: [] for node in hosts_of_small}

    def ttft(i: int) -> tuple[str, float]:
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model="small", max_tokens=8, temperature=0, stream=True,
            extra_headers={"cache-control": "no-store"},
            messages=[{"role": "user", "content": f"hello {i} {uuid.uuid4().hex[:6]}"}])
        first = None
        for chunk in raw.parse():  # vLLM's first chunk (the role) comes with the first token;
            # the demo model's tokens may decode to no text at all
            if first is None and chunk.choices:
                first = time.monotonic() - started
        assert first is not None
        return replicas[raw.headers["x-sluice-replica"]]["node"], first

    # pairs at once: the router sends the second of each pair to the less loaded replica,
    # so both hosts answer (one at a time, a prompt with no prefix to follow goes to the
    # same one every time)
    with ThreadPoolExecutor(2) as pool:
        for node, took in pool.map(ttft, range(24)):
            by_node[node].append(took)
    worker = next(node for node in hosts_of_small if node != head.address)
    assert by_node[worker], f"no answer from the worker host's replica: {by_node}"
    figures = {"requests_per_host": {k: len(v) for k, v in by_node.items()}}
    if head.address in hosts_of_small and by_node[head.address]:  # the ingress's own host
        local, remote = statistics.median(by_node[head.address]), statistics.median(
            by_node[worker])
        figures.update(ttft_p50_head_replica_ms=round(local * 1000, 1),
                       ttft_p50_worker_replica_ms=round(remote * 1000, 1),
                       ttft_worker_over_head=round(remote / local, 2))
    cluster["figures"].update(figures)
    answer = client.chat.completions.create(  # and the other model, on its own host
        model="large", max_tokens=4, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"cache-control": "no-store"})
    assert answer.choices[0].message.content is not None


def test_a_prefix_computed_on_one_host_is_loaded_from_redis_on_the_other(cluster: dict) -> None:
    assert "replicas" in cluster, "the cluster did not come up"
    replicas = cluster["replicas"]
    client = OpenAI(base_url=f"{cluster['api']}/v1", api_key="unused", max_retries=0,
                    timeout=120)
    words = ["river", "mill", "weir", "bridge", "stone", "water", "boat", "harvest", "road"]
    text = " ".join(f"{words[i % len(words)]}{i % 7}" for i in range(300))

    def ask(prompt: str) -> dict:
        rid = f"mh-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model="small", max_tokens=8, temperature=0,
            extra_headers={"cache-control": "no-store", "x-request-id": rid},
            messages=[{"role": "user", "content": prompt}])
        took = time.monotonic() - started
        body = raw.parse()
        details = body.usage.prompt_tokens_details
        return {"id": rid, "s": took, "node": replicas[raw.headers["x-sluice-replica"]]["node"],
                "text": body.choices[0].message.content, "prompt": body.usage.prompt_tokens,
                "cached": (details.cached_tokens if details else 0) or 0}

    computed, loaded, ids = [], [], set()
    for _ in range(3):  # a prompt no engine and no Redis has seen, each round
        prompt = f"[{uuid.uuid4().hex[:8]}] {text}"
        first = ask(prompt)
        assert first["prompt"] > 4 * KV_CHUNK and first["cached"] < first["prompt"] / 2, first
        other = None
        for _ in range(8):  # the router keeps a prefix on its replica until that one is the
            # busier by its margin: three at once send one to the other host
            with ThreadPoolExecutor(3) as pool:
                tries = list(pool.map(ask, [prompt] * 3))
            other = next((t for t in tries if t["node"] != first["node"]), None)
            if other is not None:
                break
        assert other is not None, f"every request stayed on {first['node']}"
        assert other["cached"] >= 0.8 * other["prompt"], other  # from the head's Redis
        assert other["text"] == first["text"]  # greedy: the loaded KV is the computed one
        computed.append(first["s"])
        loaded.append(other["s"])
        ids |= {first["id"], other["id"]}
    cluster["figures"].update(
        kv_prompt_tokens=first["prompt"],
        kv_computed_alone_p50_ms=round(statistics.median(computed) * 1000, 1),
        kv_loaded_other_host_p50_ms=round(statistics.median(loaded) * 1000, 1))

    # the ledger: the head's Redis, found by the head's address with its generated password
    from sluice.accounting.ledger import LedgerRecord

    head = cluster["head"]
    password = (cluster["work"] / "hosts" / head.name / "home/.sluice/redis/password"
                ).read_text().strip()
    store = redis.Redis(host=head.address, port=6380, password=password, socket_timeout=5)
    deadline = time.monotonic() + 30
    while True:
        seen = {LedgerRecord.from_fields(fields).request_id
                for _, fields in store.xrange("sluice:ledger")}
        if ids <= seen:
            break
        assert time.monotonic() < deadline, f"the ledger lacks {ids - seen}"
        time.sleep(1)
    assert any(not k.startswith(b"sluice:") for k in store.scan_iter(count=1000))  # KV chunks


def test_a_worker_host_lost_under_load_costs_only_the_streams_it_held(cluster: dict) -> None:
    """Node removal (the fault-tolerance promise): open-loop load on `small` through the
    head while a worker host holding one of small's replicas dies whole (its PID 1 killed:
    every process on it ends at once, as when a machine loses power). Requests the dead
    replica held before their first byte, and those the router still sends it until Serve
    drops it, are retried on the other host's replica; only a stream that had started may
    end with an error event. Nothing hangs, no stream is cut without one, no other error,
    the ledger holds every accepted request once, and the success rate is back at 99%
    within KILL_RECOVERY_S."""
    assert "replicas" in cluster, "the cluster did not come up"
    import asyncio

    from loadtests.chaos import load, timeline
    from loadtests.chaos.ledger_check import check
    from loadtests.chaos.outcomes import (
        HUNG,
        OK,
        OTHER,
        RETRIABLE,
        TRUNCATED,
        classify_all,
        summarize,
    )

    small = _engines(_serve_replicas(cluster["dashboard"]), "small")
    victims = [h for h in cluster["workers"] if h.address in set(small.values())]
    assert victims and len(set(small.values())) == 2, small
    victim = victims[0]
    on_victim = {rid for rid, node in small.items() if node == victim.address}
    spec = load.LoadSpec(rate=NODE_LOSS_RATE, duration_s=NODE_LOSS_S, min_tokens=32,
                         max_tokens=64, client_timeout_s=60.0)
    prefix = f"mh-node-{uuid.uuid4().hex[:6]}"
    requests = load.plan(spec, 7, prefix)
    since_ms = int(time.time() * 1000) - 1000
    killed: dict[str, float | bool] = {}
    traffic = load.Traffic()

    async def kill_later(started: float) -> None:
        await asyncio.sleep(NODE_LOSS_AT_S)
        deadline = time.monotonic() + 10  # strike while the host is sending a stream
        while time.monotonic() < deadline and not traffic.holding("x-sluice-replica",
                                                                   on_victim):
            await asyncio.sleep(0.01)
        killed["held_a_stream"] = traffic.holding("x-sluice-replica", on_victim)
        killed["at_s"] = time.monotonic() - started
        await asyncio.to_thread(victim.kill)  # it waits for the host's starter to end

    async def both() -> list:
        started = time.monotonic()
        observations, _ = await asyncio.gather(
            load.run(cluster["api"], requests, spec, started, traffic=traffic),
            kill_later(started))
        return observations

    observations = classify_all(asyncio.run(both()), None)
    counts = summarize(observations)
    fault_at = float(killed["at_s"])
    recovery = timeline.recovery_s([(o.sent_s, o.kind == OK) for o in observations], fault_at)
    head = cluster["head"]
    password = (cluster["work"] / "hosts" / head.name / "home/.sluice/redis/password"
                ).read_text().strip()
    ledger = check(f"redis://:{password}@{head.address}:6380", prefix, since_ms,
                   {o.request_id for o in observations if o.accepted}, timeout_s=60)
    cluster["figures"]["node_loss"] = {**counts, "recovery_s": recovery,
                                       "ledger_delta": ledger.delta, "rate": spec.rate,
                                       "victim": victim.name, "fault_at_s": fault_at,
                                       "held_a_stream": killed["held_a_stream"]}
    served = [o for o in observations if o.headers.get("x-sluice-replica") in on_victim]
    assert served, "the victim host's replica answered nothing: the loss tested nothing"
    cluster["figures"]["node_loss"]["victim_answered"] = len(served)
    bad = [o.as_dict() for o in observations if o.kind in (HUNG, TRUNCATED, OTHER)]
    assert not bad, (counts, bad[:3])
    failed = [o for o in observations if o.kind == RETRIABLE]
    assert all(o.stream and o.sent_s <= fault_at for o in failed), [
        o.as_dict() for o in failed]
    assert recovery is not None and recovery <= KILL_RECOVERY_S, (recovery, counts)
    assert ledger.exact, ledger.as_dict()
    assert counts["sent"] == len(requests) and counts[OK] >= 0.9 * len(requests), counts


def test_ray_down_leaves_nothing_running_on_either_host(cluster: dict) -> None:
    """`make cluster-down`: the head's Redis stopped, Ray stopped on each worker (`ray down`
    alone stops only the head's and leaves the workers' engines running, orphaned), then
    `ray down`."""
    config, env, log = cluster["config"], cluster["env"], cluster["log"]
    started = time.monotonic()
    _launcher(["make", "-s", "cluster-down", f"CLUSTER={config}",
               f"CLUSTER_PROFILE={PROFILE}"], env, 300, log)
    cluster["figures"]["ray_down_s"] = round(time.monotonic() - started, 1)
    deadline = time.monotonic() + DOWN_BOUND_S
    left: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        left = {h.name: h.describe(h.processes()) for h in cluster["hosts"]}
        left = {k: v for k, v in left.items() if v}
        if not left:
            break
        time.sleep(2)
    assert not left, f"still running {DOWN_BOUND_S} s after ray down: {left}"
    cluster["figures"]["down_to_nothing_left_s"] = round(time.monotonic() - started, 1)
