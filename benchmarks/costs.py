"""Per-worker costs of binding, each measured in a fresh interpreter like a new worker.

* files opened by the first bind of a process (``sys.addaudithook`` on "open": a
  count, so noise-free), that bind's wall time, and the CPU time ray_numa adds to a
  worker: the bootstrap's import, the binding code imported at the first
  assignment, the bind itself;
* what the bootstrap adds to the imports before ``default_worker.py`` runs
  (``python -X importtime``): it imports ``ray._private.worker`` too, but that is
  ``default_worker.py``'s own first import, so the modules Ray's import loads are not
  counted as the bootstrap's.

Run as a child: ``python benchmarks/costs.py bind '<options JSON>' '<gpu ids JSON>'``
prints one JSON line; the fixture and the GPU table come in the environment, as a
Ray worker gets them.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
# What the bootstrap imports before it hands over to default_worker.py, in order (boot.py
# finds ray_numa_boot through its own directory, sys.path[0]).
BOOT_IMPORTS = (f"import sys; sys.path.insert(0, {str(ROOT / 'ray_numa' / '_boot')!r}); "
                "import ray_numa_boot; from ray_numa import worker; import ray._private.worker")
RAY_IMPORTS = "import ray._private.worker"     # default_worker.py's first import


def _child_bind(options: str, gpu_ids: Sequence[str]) -> Dict:
    recording = False
    import ray._private.worker  # noqa: F401  a Ray worker has Ray (and psutil) loaded
    cpu0 = time.process_time()
    from ray_numa import worker  # noqa: F401  what the bootstrap imports
    cpu1 = time.process_time()
    from ray_numa.binding import process_binder   # what the first assignment imports
    from ray_numa.options import parse
    cpu2 = time.process_time()
    opts = parse(json.loads(options))
    opened: list = []
    # the audit hook here, not topology.opened_files: importing topology for it would
    # spare the bind that import when it plans itself
    sys.addaudithook(lambda event, args: opened.append(args[0])
                     if event == "open" and recording else None)
    recording, t0, cpu3 = True, time.perf_counter(), time.process_time()
    binding = process_binder().bind(opts, list(gpu_ids))
    elapsed, cpu4 = time.perf_counter() - t0, time.process_time()
    recording = False
    return {"opened": len(opened), "ms": elapsed * 1e3, "status": binding.status,
            "cpu_ms": {"bootstrap import": (cpu1 - cpu0) * 1e3,
                       "binding import": (cpu2 - cpu1) * 1e3,
                       "first bind": (cpu4 - cpu3) * 1e3}}


def _env(extra: Mapping[str, str]) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def agent_env(env: Mapping[str, str], options) -> Dict[str, str]:
    """What the runtime-env agent would hand an "auto" worker (``env``: its fixture):
    the node's GPU table and its plan for each GPU id."""
    code = ("import json, sys\n"
            "from ray_numa import gpu_table, prepared\n"
            "from ray_numa.environment import GPU_TABLE_ENV, PLANS_ENV\n"
            "from ray_numa.options import parse\n"
            "print(json.dumps({GPU_TABLE_ENV: gpu_table.for_agent(),\n"
            "                  PLANS_ENV: prepared.for_agent(parse(json.loads(sys.argv[1])))}))\n")
    return json.loads(subprocess.run([sys.executable, "-c", code, json.dumps(options)],
                                     check=True, capture_output=True, text=True,
                                     env=_env(env)).stdout)


def first_bind(env: Mapping[str, str], options, gpu_ids: Sequence[str],
               runs: int = 5) -> Dict:
    """Files opened (the same every run) and median wall time of a process's first
    bind, each run a fresh interpreter."""
    cmd = [sys.executable, __file__, "bind", json.dumps(options), json.dumps(list(gpu_ids))]
    results = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True,
                                         env=_env(env)).stdout.splitlines()[-1])
               for _ in range(runs)]
    out = dict(results[-1])
    out["ms"] = statistics.median(r["ms"] for r in results)
    out["cpu_ms"] = {k: statistics.median(r["cpu_ms"][k] for r in results)
                     for k in out["cpu_ms"]}
    return out


_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$")


def _self_times(imports: str) -> Dict[str, int]:
    """Self import time (us) of each module ``imports`` loads in a fresh interpreter,
    modules it imported at startup excluded."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c",
         f"import sys; sys.stderr.write('--start--\\n'); {imports}"],
        check=True, capture_output=True, text=True, env=_env({})).stderr
    lines = err.split("--start--\n", 1)[1].splitlines()
    return {m.group(4): int(m.group(1)) for m in map(_LINE.match, lines) if m}


def boot_import_ms(runs: int = 7) -> Dict:
    """Median import time the bootstrap adds (the modules it loads that Ray's own
    import does not), and the heaviest of those modules."""
    rays = set(_self_times(RAY_IMPORTS))
    totals, heavy = [], {}
    for _ in range(runs):
        added = {name: us for name, us in _self_times(BOOT_IMPORTS).items()
                 if name not in rays}
        totals.append(sum(added.values()) / 1e3)
        for name, us in added.items():
            heavy[name] = max(heavy.get(name, 0), us)
    top = sorted(heavy.items(), key=lambda kv: -kv[1])[:3]
    return {"ms": statistics.median(totals),
            "heaviest": ", ".join(f"{name} {us / 1e3:.1f} ms self" for name, us in top)}


def nvml_inits(log: Path, worker_pids: Sequence[int]) -> Dict[str, float]:
    """nvmlInit calls per worker, and by every other process (the agent), from the
    fake NVML's log."""
    pids = [int(p) for p in log.read_text().split()] if log.exists() else []
    workers = set(worker_pids)
    in_workers = sum(1 for p in pids if p in workers)
    return {"per_worker": in_workers / max(len(workers), 1),
            "elsewhere": len(pids) - in_workers}


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[0] == "bind":
        print(json.dumps(_child_bind(argv[1], json.loads(argv[2]))))


if __name__ == "__main__":
    main()
