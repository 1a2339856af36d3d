"""Where the CPU goes: CPU seconds per 1,000 output tokens of every process of bare vLLM and
of Sluice, under the same `vllm bench serve` load, same run.

On a machine whose cores the engines saturate, serving throughput is what the engine gets of
the CPU; every process the serving path adds (ingress, LLMServer replica, Ray's own) takes
its share. This reads each process's CPU time (psutil) before and after each load cell and
groups processes by role. Optionally samples the Python stacks of Sluice's ingress and
LLMServer replica with py-spy (`--py-spy`, if installed) while the load runs.

    python -m loadtests.cpu_breakdown --out bench-results/overhead/cpu
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psutil

from loadtests.overhead_bench import ROOT, log
from loadtests.vllm_bench_compare import TARGETS, bench_argv, both_servers, run_cell

ROLES = (  # (role, substring of the command line), first match wins
    ("sluice: ingress replica", "ServeReplica:sluice:SluiceIngress"),
    ("sluice: LLMServer small", "SluiceLLMServer:small"),
    ("sluice: LLMServer large (idle)", "SluiceLLMServer:large"),
    ("sluice: Serve controller/proxy", "ServeController"),
    ("sluice: Serve controller/proxy", "ProxyActor"),
    ("sluice: raylet/gcs/agents", "raylet"),
    ("sluice: raylet/gcs/agents", "gcs_server"),
    ("sluice: raylet/gcs/agents", "DashboardAgent"),
    ("sluice: raylet/gcs/agents", "RuntimeEnvAgent"),
    ("sluice: raylet/gcs/agents", "dashboard/agent.py"),
    ("sluice: raylet/gcs/agents", "runtime_env/agent"),
    ("sluice: raylet/gcs/agents", "monitor.py"),
    ("sluice: redis", "redis-server"),
)


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()) or p.name()
    except psutil.Error:
        return ""


def _small(tree: list[psutil.Process]) -> int:
    return next((p.pid for p in tree if "SluiceLLMServer:small" in _cmd(p)), -1)


def processes(bare: subprocess.Popen[bytes], sluice: subprocess.Popen[bytes]
              ) -> dict[int, tuple[str, psutil.Process]]:
    """pid -> (role, process) for every process of both servers."""
    found: dict[int, tuple[str, psutil.Process]] = {}
    for root, side in ((bare, "bare"), (sluice, "sluice")):
        tree = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
        for p in tree:
            cmd, name = _cmd(p), p.name()
            if side == "bare":
                role = ("bare: EngineCore" if "EngineCore" in name + cmd
                        else "bare: model worker (mp executor)" if "Worker" in name
                        else "bare: API server")
            elif "EngineCore" in name + cmd:  # Sluice's CPU engines run the model in-process
                role = ("sluice: EngineCore small (model in-process)" if p.ppid() == _small(tree)
                        else "sluice: EngineCore large (idle)")
            else:
                role = next((r for r, key in ROLES if key in cmd), "sluice: driver/other")
            found[p.pid] = (role, p)
    return found


def cpu_times(procs: dict[int, tuple[str, psutil.Process]]) -> dict[int, float]:
    out = {}
    for pid, (_, p) in procs.items():
        try:
            t = p.cpu_times()
            out[pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def py_spy(pid: int, seconds: int, path: Path) -> threading.Thread:
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    path.unlink(missing_ok=True)  # never report an earlier run's samples

    def record() -> None:
        subprocess.run([binary, "record", "--pid", str(pid), "--duration", str(seconds),
                        "--format", "raw", "--output", str(path), "--nonblocking"],
                       capture_output=True, timeout=seconds + 60, check=False)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def top_functions(raw: Path, n: int = 25) -> list[tuple[str, float]]:
    """Share of samples in which each function is on the stack (inclusive), from py-spy's
    collapsed-stack output."""
    total, inclusive = 0, Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            inclusive[frame] += int(count)
    return [(frame, c / total) for frame, c in inclusive.most_common(n)] if total else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results/overhead/cpu")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--py-spy", action="store_true", help="also sample Sluice's stacks")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    per_role: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    throughput: dict[str, list[float]] = defaultdict(list)
    profiles: dict[str, Any] = {}
    with both_servers(args.out) as (model_dir, bare, sluice):
        procs = processes(bare, sluice)
        for r in range(args.rounds):
            order = list(TARGETS) if r % 2 == 0 else list(reversed(TARGETS))
            for server in order:
                name = f"cpu-c{args.concurrency}-r{r + 1}-{server}"
                spies = []
                if args.py_spy and server == "sluice" and r == 0:
                    for role in ("sluice: ingress replica", "sluice: LLMServer small"):
                        pid = next(p for p, (rl, _) in procs.items() if rl == role)
                        path = args.out / f"py-spy-{role.split(': ')[1].replace(' ', '-')}.txt"
                        spies.append((role, path, py_spy(pid, 12, path)))
                before = cpu_times(procs)
                data = run_cell(bench_argv(TARGETS[server], model_dir, "random",
                                           args.concurrency, args.prompts, args.out / "runs",
                                           name), args.out / "runs" / f"{name}.json", 900)
                after = cpu_times(procs)
                for _, _, thread in spies:
                    thread.join(timeout=90)
                for role, path, _ in spies:
                    if path.exists():
                        profiles[role] = top_functions(path)
                ktok = data["total_output_tokens"] / 1000
                throughput[server].append(data["output_throughput"])
                used: dict[str, float] = defaultdict(float)
                for pid, (role, _) in procs.items():
                    if pid in before and pid in after:
                        used[role] += after[pid] - before[pid]
                for role, seconds in used.items():
                    per_role[role][server].append(seconds / ktok)
                log(f"{name}: {data['output_throughput']:.0f} out tok/s; CPU s per 1k tokens: "
                    + ", ".join(f"{k} {v / ktok:.3f}" for k, v in sorted(used.items())
                                if k.startswith(server)))
    result = {"throughput": throughput,
              "cpu_s_per_1k_tokens": {role: {s: sorted(v) for s, v in d.items()}
                                      for role, d in per_role.items()},
              "py_spy_inclusive_share": profiles}
    (args.out / "cpu_breakdown.json").write_text(json.dumps(result, indent=1))
    for role, d in sorted(result["cpu_s_per_1k_tokens"].items()):
        for server, values in d.items():
            if role.startswith(server):
                print(f"{role:45s} {sum(values) / len(values):.3f} CPU s / 1k output tokens")
    for role, funcs in profiles.items():
        print(f"\n{role}: functions on the stack (share of samples)")
        for frame, share in funcs[:20]:
            print(f"  {share:6.1%}  {frame[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
