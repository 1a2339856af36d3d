"""`sluice build` output deployed by Ray Serve's own `serve deploy` onto a running cluster.

The cluster is started the way cluster.yaml's head starts: `ray start --head` after
`eval "$(sluice cluster env ...)"` and `eval "$(sluice cluster redis ...)"` (the head's Redis
with a generated password), on ports of its own (8850-8857, Redis 6430) and its own Ray temp
dir, on this host: the API on loopback, Ray and the head's Redis on the address Ray gives the
head node (Ray never lets that be loopback).

Then: Serve's schema and `serve deploy` accept the config, the app comes up RUNNING (`serve
status`), a chat request is answered, the replicas found the head's Redis by the head's
address with its password (response cache `ok`, the ledger record and the KV tier's chunks
are in it), `sluice deploy` of the unchanged platform is a no-op update (the same ingress
replica keeps answering), `sluice status` reports it, and an edited profile rolls out new
replicas of every deployment while both models keep answering. Everything the test started
is stopped by PID at the end, and checked gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import yaml
from openai import OpenAI

# alone: after every other test, with the session's shared stack stopped. Its rollout runs
# the cluster's three deployments and their surge replacements at once (four engines); with
# the shared stack's three engines beside them, a full ci-local run at 179007c ran the
# 23.5 GiB machine out of memory mid-rollout (Ray's OOM killer: 110 requests answered 500 by
# Serve's proxy), and a CI run at c4a535a lost two requests in the same place.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600), pytest.mark.alone]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
API, DASHBOARD, GCS, CLIENT, METRICS, AGENT, AGENT_GRPC, RUNTIME_ENV = range(8850, 8858)
REDIS_PORT = 6430
KV_CHUNK = 64
FIRST_TOKEN_S, CLIENT_TIMEOUT_S = 90, 300


def _profile(tmp: Path) -> Path:
    profile = yaml.safe_load((ROOT / "platform/profiles/local-cpu.yaml").read_text())
    profile.pop("routing", None)  # no cascade: nothing here is about routing
    profile["catalog"] = str(ROOT / "platform/catalog.yaml")
    # as the GPU profile: Serve's proxy in front (a rollout's second ingress replica could
    # not take a direct-ingress port on the same host), a rollout that surges
    # an engine that does not answer in FIRST_TOKEN_S is a 503 the ingress renders, before
    # the rollout loop's client gives up (CLIENT_TIMEOUT_S): a wait is an outcome, not a hang
    profile["ingress"] = {**profile["ingress"], "port": API, "transport": "proxy",
                          "first_token_timeout_s": FIRST_TOKEN_S}
    profile["max_surge_percent"] = 100
    profile["semantic_cache"] = {"enabled": False}
    profile["kv_tier"] = {"enabled": True, "chunk_size": KV_CHUNK}
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _env(auth: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SLUICE_REDIS_URL")}
    return {**env, "RAY_AUTH_MODE": auth, "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{BIN}:{env.get('PATH', '')}"}


def _run(argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=timeout)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _until(what: str, check, bound_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + bound_s
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            pytest.fail(f"{what}: not within {bound_s:.0f} s\n{tail}")
        time.sleep(2)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code < 500
    except httpx.HTTPError:
        return False


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _stop(head: subprocess.Popen, family: list[psutil.Process], ray_tmp: str) -> list[str]:
    """End what this test started: `ray start --block` shuts its node down on SIGINT; any
    process of the tree it spawned (or naming its temp dir) that survives is killed by PID."""
    if head.poll() is None:
        head.send_signal(signal.SIGINT)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
    survivors = [p for p in family if _alive(p)]
    for proc in psutil.process_iter(["cmdline"]):
        if ray_tmp in " ".join(proc.info["cmdline"] or []) and proc not in survivors:
            survivors.append(proc)
    for proc in survivors:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(survivors, timeout=10)
    return [str(p.pid) for p in survivors if _alive(p)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, shared_stack_stopped: None) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("serve-config")
    ray_tmp = tempfile.mkdtemp(prefix="ray-sc-", dir="/tmp")  # short: Ray's socket paths
    token = Path.home() / ".ray" / "auth_token"
    auth = "token" if token.exists() else "disabled"
    env = _env(auth)
    profile = _profile(tmp)
    redis_dir = tmp / "redis"
    # Ray never makes a node's address loopback (`--node-ip-address=127.0.0.1` resolves to
    # this host's own address): the head's Redis listens where the head is, as on a cluster
    from ray._private.services import get_node_ip_address

    head_ip = get_node_ip_address()
    log = tmp / "head.log"
    start = (
        f'eval "$(sluice cluster env --profile {profile})" && '
        f'eval "$(sluice cluster redis --profile {profile} --port {REDIS_PORT} '
        f'--bind {head_ip} --dir {redis_dir})" && '
        f"exec ray start --head --block --node-ip-address=127.0.0.1 --port={GCS} "
        f"--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port={DASHBOARD} "
        f"--ray-client-server-port={CLIENT} --metrics-export-port={METRICS} "
        f"--dashboard-agent-listen-port={AGENT} --dashboard-agent-grpc-port={AGENT_GRPC} "
        f"--runtime-env-agent-port={RUNTIME_ENV} --num-cpus=4 --temp-dir={ray_tmp} "
        "--disable-usage-stats")
    started = time.monotonic()
    with log.open("wb") as out:
        head = subprocess.Popen(["bash", "-c", start], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    family: list[psutil.Process] = []
    dashboard = f"http://127.0.0.1:{DASHBOARD}"
    try:
        _until("Ray's dashboard", lambda: head.poll() is None and
               _answers(f"{dashboard}/api/version"), 120, log)
        family = _tree(head.pid)
        password = (redis_dir / "password").read_text().strip()
        yield {"tmp": tmp, "env": env, "profile": profile, "dashboard": dashboard,
               "api": f"http://127.0.0.1:{API}", "head": head, "log": log,
               "redis": redis.Redis(host=head_ip, port=REDIS_PORT, password=password),
               "started": started, "ray_tmp": ray_tmp}
    finally:
        family += [p for p in _tree(head.pid) if p not in family]  # replicas, engines
        left = _stop(head, family, ray_tmp)
        shutil.copytree(Path(ray_tmp) / "session_latest" / "logs", tmp / "ray-logs",
                        dirs_exist_ok=True, ignore_dangling_symlinks=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)  # its logs are kept in tmp (pytest's)
        _run([str(BIN / "sluice"), "cluster", "redis", "--profile", str(profile), "--stop",
              "--port", str(REDIS_PORT), "--bind", head_ip, "--dir", str(redis_dir)], env)
        assert not left, f"processes left after teardown: {left}"
        assert not _answers(f"{dashboard}/api/version")


def test_serve_deploy_of_sluice_build_serves_a_chat(cluster: dict) -> None:
    env, tmp = cluster["env"], cluster["tmp"]
    config = tmp / "serve-config.yaml"
    _run([str(BIN / "sluice"), "build", "--profile", str(cluster["profile"]),
          "-o", str(config)], env)
    document = yaml.safe_load(config.read_text())
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(document)
    assert "redis_url" not in document["applications"][0]["args"]  # found on the cluster

    deploy_started = time.monotonic()
    _run([str(BIN / "serve"), "deploy", "-a", cluster["dashboard"], str(config)], env)
    _until("/readyz 200", lambda: _ready(cluster["api"]), 420, cluster["log"])
    status = yaml.safe_load(_run([str(BIN / "serve"), "status", "-a", cluster["dashboard"]],
                                 env))
    app = next(a for name, a in status["applications"].items() if name == "sluice")
    assert app["status"] == "RUNNING", app
    print(f"serve deploy to ready: {time.monotonic() - deploy_started:.0f} s "
          f"(ray start to ready: {time.monotonic() - cluster['started']:.0f} s)")

    ready = httpx.get(f"{cluster['api']}/readyz", timeout=10).json()
    assert ready["response_cache"] == "ok" and ready["kv_tier"] == "ok", ready
    client = OpenAI(base_url=f"{cluster['api']}/v1", api_key="unused", max_retries=0)
    words = " ".join(f"weir{i % 9} mill{i % 5}" for i in range(150))
    raw = client.chat.completions.with_raw_response.create(
        model="small", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] {words}"}])
    reply = raw.parse()
    assert reply.choices[0].message.content is not None
    assert reply.usage.prompt_tokens > 2 * KV_CHUNK
    cluster["ingress"] = raw.headers["x-sluice-ingress"]

    store = cluster["redis"]  # the head's Redis, reached by the head's address + password
    _until("the ledger record in the head's Redis",
           lambda: store.xlen("sluice:ledger") >= 1, 30)
    _until("KV-tier chunks in the head's Redis",
           lambda: any(not k.startswith(b"sluice:") for k in store.scan_iter(count=1000)), 30)


def _ready(api: str) -> bool:
    try:
        return httpx.get(f"{api}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def test_sluice_deploy_of_the_same_platform_changes_nothing(cluster: dict) -> None:
    """`sluice deploy` connects to the cluster as Ray finds it (RAY_ADDRESS), applies the
    same config through Serve's REST API: an unchanged platform is not redeployed."""
    assert "ingress" in cluster, "the first test did not get an answer"
    env = {**cluster["env"], "RAY_ADDRESS": f"127.0.0.1:{GCS}"}
    started = time.monotonic()
    _run([str(BIN / "sluice"), "deploy", "--profile", str(cluster["profile"]),
          "--wait", "60"], env, timeout=120)
    took = time.monotonic() - started
    answer = httpx.get(f"{cluster['api']}/healthz", timeout=10)
    assert answer.headers["x-sluice-ingress"] == cluster["ingress"]  # not replaced
    out = _run([str(BIN / "sluice"), "status", "--address", cluster["dashboard"],
                "--url", cluster["api"]], cluster["env"])
    assert "application sluice: RUNNING" in out and "/readyz: 200" in out, out
    print(f"sluice deploy (no change) took {took:.1f} s\n{out}")


def _serve_log_lines(ray_tmp: str, request_id: str, limit: int = 8) -> list[str]:
    """The Serve log lines (proxy, replicas, controller) that name a request id."""
    lines: list[str] = []
    for path in sorted((Path(ray_tmp) / "session_latest" / "logs" / "serve").glob("*.log")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        lines += [f"{path.name}: {line[:300]}" for line in text.splitlines()
                  if request_id in line]
    return lines[:limit]


def test_a_changed_platform_rolls_out_while_every_model_keeps_answering(cluster: dict) -> None:
    """An edited profile is a new config: `sluice deploy` rolls out a new version of every
    deployment (ingress and both engines) and, with max_surge_percent, Serve starts each
    replacement before it stops the replica it replaces, so a closed loop of requests to
    both one-replica models is answered throughout while all three are replaced."""
    assert "ingress" in cluster, "the first test did not get an answer"
    profile = cluster["profile"]
    data = yaml.safe_load(profile.read_text())
    data["ingress"]["max_n"] = 7  # any change: the fingerprint in the config's args changes
    profile.write_text(yaml.safe_dump(data))
    url = f"{cluster['api']}/v1/chat/completions"
    seen: list[dict] = []
    stop = threading.Event()

    def ask(model: str) -> None:
        rid = f"rollout-{model}-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        entry = {"model": model, "id": rid, "status": 0, "replica": "", "ingress": "",
                 "retry_after": None, "said": ""}
        try:
            r = httpx.post(url, timeout=CLIENT_TIMEOUT_S,
                           headers={"cache-control": "no-store", "x-request-id": rid},
                           json={"model": model, "max_tokens": 4, "messages": [
                               {"role": "user", "content": f"hi {uuid.uuid4().hex[:6]}"}]})
            entry.update(status=r.status_code, replica=r.headers.get("x-sluice-replica", ""),
                         ingress=r.headers.get("x-sluice-ingress", ""),
                         retry_after=r.headers.get("retry-after"),
                         said="" if r.status_code == 200 else r.text[:200])
        except httpx.HTTPError as exc:
            entry["said"] = repr(exc)
        entry["took_s"] = round(time.monotonic() - started, 1)
        seen.append(entry)

    def loop() -> None:
        while not stop.is_set():
            for model in ("small", "large"):
                ask(model)
            time.sleep(0.2)

    ask("small")
    ask("large")
    before = {e["model"]: e["replica"] for e in seen}
    worker = threading.Thread(target=loop, daemon=True)
    env = {**cluster["env"], "RAY_ADDRESS": f"127.0.0.1:{GCS}"}
    started = time.monotonic()
    worker.start()
    try:
        _run([str(BIN / "sluice"), "deploy", "--profile", str(profile), "--wait", "360"],
             env, timeout=420)
        took = time.monotonic() - started
        time.sleep(3)  # requests on the new replicas only
    finally:
        stop.set()
        worker.join(timeout=CLIENT_TIMEOUT_S + 30)
    outcomes = Counter(e["status"] for e in seen)
    print(f"rollout took {took:.0f} s; {len(seen)} requests during it: {dict(outcomes)}")
    failed = [e for e in seen if e["status"] != 200]
    for e in failed:  # each failure with what Serve logged of it
        e["serve_log"] = _serve_log_lines(cluster["ray_tmp"], e["id"])
        print(e)
    # Every request ends with an outcome: never a hang (status 0: the client gave up after
    # CLIENT_TIMEOUT_S) or a dropped connection. A failure the ingress rendered (it names
    # itself in x-sluice-ingress) is a retriable 503 with Retry-After; one it did not is a
    # 5xx of Serve's proxy, in front of it: once 1 of 160 requests in a CI run, a request
    # it sent to an ingress replica that was being stopped (a race in Serve's own rollout,
    # README "Deploy to a cluster"). Together they stay rare.
    assert all(e["status"] != 0 for e in seen), [e for e in failed if e["status"] == 0]
    rendered = [e for e in failed if e["ingress"]]
    assert all(e["status"] == 503 and e["retry_after"] for e in rendered), rendered
    assert all(e["status"] >= 500 for e in failed if not e["ingress"]), failed
    assert len(failed) <= max(1, len(seen) // 50), failed
    for model in ("small", "large"):
        replicas = [e["replica"] for e in seen if e["model"] == model and e["replica"]]
        assert replicas[-1] != before[model], model  # replaced ...
        assert {before[model], replicas[-1]} <= set(replicas[1:])  # both answered the loop
    assert seen[-1]["ingress"] != cluster["ingress"]  # the ingress replica was replaced as well
