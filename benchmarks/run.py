"""ray-numa benchmarks: one command, one markdown table, each pair measured side by
side in the same run.

    python benchmarks/run.py [--actors 8] [--rounds 3] [--no-vm]

* worker start overhead: creation to first method call of N GPU actors with
  ``numa_bind`` vs without, on a real local Ray cluster (fake GPUs that the fake NVML
  places on node 0 of this kernel, so the in-process syscall path really runs);
  rounds alternate and every round uses a fresh runtime_env so both sides start new
  workers; median of rounds. Target ratio <= 1.05.
* topology + GPU resolution (plan for one GPU on the DGX H100 fixture), cold (caches
  cleared, sysfs tree re-read) and cached. Target < 1 ms cached.
* page locality (VM tier, 2 NUMA nodes): % of a 256 MiB buffer on the GPU's node.
  Target >= 99% bound.
* pinned host-to-device bandwidth, only where torch sees a CUDA GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_start_overhead(actors: int, rounds: int):
    from conftest import ray_cluster
    from tests.fixtures import nvml_only

    fixture = nvml_only.write(Path(tempfile.mkdtemp()))
    times = {"without numa_bind": [], "numa_bind auto": []}
    # Ray gets the two fake GPUs that NVML places (node 0); actors share them
    with ray_cluster(fixture_root=fixture, num_gpus=2, num_cpus=4 * actors,
                     log_to_driver=False) as ray:
        @ray.remote(num_gpus=2 / actors)
        class Model:
            def ready(self):
                import ray_numa
                return ray_numa.current_binding().status

        for r in range(rounds):
            for name in (list(times) if r % 2 == 0 else list(times)[::-1]):
                env = {"env_vars": {"BENCH_ROUND": f"{r}-{name}"}}
                if name != "without numa_bind":
                    env["numa_bind"] = {"cpus": sorted(os.sched_getaffinity(0))}
                t0 = time.perf_counter()
                handles = [Model.options(runtime_env=env).remote() for _ in range(actors)]
                statuses = ray.get([h.ready.remote() for h in handles], timeout=600)
                times[name].append(time.perf_counter() - t0)
                for h in handles:
                    ray.kill(h)
                if name != "without numa_bind":
                    assert set(statuses) == {"bound"}, statuses
    base, ours = (statistics.median(v) for v in times.values())
    return [("worker start: %d actors to first call, without numa_bind" % actors,
             f"{base:.2f} s", ""),
            ("worker start: %d actors to first call, numa_bind (syscall path)" % actors,
             f"{ours:.2f} s", f"ratio {ours / base:.3f} (target <= 1.05)")]


def bench_resolution():
    from ray_numa import binding, gpus, topology
    from ray_numa.options import parse
    from tests.fixtures.build import build

    tree = build("dgx-h100", Path(tempfile.mkdtemp()) / "dgx")
    os.environ["RAY_NUMA_FIXTURE"] = str(tree)
    opts = parse("auto")
    cold = []
    for _ in range(5):
        topology._cached_topology.cache_clear()
        gpus._discover.cache_clear()
        t0 = time.perf_counter()
        binding.plan_for(opts, ["5"])
        cold.append(time.perf_counter() - t0)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        binding.plan_for(opts, ["5"])
    cached = (time.perf_counter() - t0) / n
    del os.environ["RAY_NUMA_FIXTURE"]
    return [("topology + GPU resolution + plan (DGX H100, 224 CPUs), cold",
             f"{statistics.median(cold) * 1e3:.1f} ms", ""),
            ("topology + GPU resolution + plan, cached", f"{cached * 1e3:.3f} ms",
             "target < 1 ms")]


def bench_locality():
    from tests.vm import vmtier
    if vmtier.missing_tools():
        return [("page locality (VM)", "n/a", f"needs {vmtier.missing_tools()}")]
    script = (f"cd {ROOT} && PYTHONDONTWRITEBYTECODE=1 {sys.executable} "
              "benchmarks/locality.py\n")
    result = vmtier.boot("two-node", script)
    line = next((l for l in result.output.splitlines() if l.startswith("LOCALITY ")), None)
    if line is None:
        return [("page locality (VM)", "failed", result.output[-300:].replace("\n", " "))]
    data = json.loads(line[len("LOCALITY "):])
    rows = []
    for case, pct in data.items():
        target = "target >= 99%" if case in ("bound before touch",
                                              "bound after touch, migrate") else ""
        rows.append((f"page locality, 256 MiB on the GPU's node (2-node VM): {case}",
                     f"{pct:.2f} %", target))
    return rows


def bench_h2d():
    try:
        import torch
    except ImportError:
        return [("pinned host->device bandwidth", "n/a", "torch not installed")]
    if not torch.cuda.is_available():
        return [("pinned host->device bandwidth", "n/a", "no CUDA GPU")]
    from ray_numa import bind_current_process
    x = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
    y = torch.empty_like(x, device="cuda")

    def gbps():
        for _ in range(3):
            y.copy_(x, non_blocking=True)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            y.copy_(x, non_blocking=True)
        torch.cuda.synchronize()
        return 20 * x.numel() / (time.perf_counter() - t0) / 1e9

    before = gbps()
    b = bind_current_process(gpu=0)
    x = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
    after = gbps()
    return [("pinned H2D, unbound", f"{before:.1f} GB/s", ""),
            (f"pinned H2D, bound ({b.status}: {b.cpus})", f"{after:.1f} GB/s", "")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--actors", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-vm", action="store_true")
    args = ap.parse_args()
    rows = bench_resolution() + bench_start_overhead(args.actors, args.rounds)
    if not args.no_vm:
        rows += bench_locality()
    rows += bench_h2d()
    lines = ["| measurement | value | note |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
