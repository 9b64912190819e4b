"""Instructions a real Ray worker's main thread executes from ``exec`` to its first
method call, with and without numa_bind: a count (valgrind's callgrind), nearly the
same every run, where times on a shared 2-core machine drift by several percent.

Each side's worker runs under ``valgrind --tool=callgrind`` through the runtime_env's
``py_executable`` (the plugin wraps whatever interpreter that names, as it does for
pip/uv/conda), and the actor's first method ends the process with ``os._exit`` so the
count stops at the first call. Only the main thread is counted: it runs the
interpreter's start, Ray's imports, the bootstrap and the bind; Ray's gRPC and
polling threads do work that depends on how long things take (slower under valgrind).
Needs ``valgrind`` (``apt install valgrind``); each worker takes ~20 s under it.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

Sides = Mapping[str, Tuple[float, Mapping]]   # name -> (num_gpus, runtime_env)


def available() -> bool:
    return shutil.which("valgrind") is not None


def _main_thread_count(folder: Path, wait: float = 120) -> int:
    """The main thread's total from ``callgrind.out.<pid>-01`` (--separate-threads):
    its last line, ``totals:``, once valgrind has finished writing it."""
    deadline = time.monotonic() + wait
    while True:
        for path in folder.glob("*-01"):
            last = path.read_text().rstrip().rsplit("\n", 1)[-1]
            if last.startswith("totals:"):
                return int(last.split()[1])
        if time.monotonic() > deadline:
            raise TimeoutError(f"callgrind wrote no main-thread totals under {folder}")
        time.sleep(0.5)


def run(sides: Sides, fixture: Path, num_gpus: int, runs: int = 2,
        job_runtime_env: Optional[Mapping] = None) -> Dict[str, List[int]]:
    """Main-thread instructions per side, ``runs`` workers each (sides alternate)."""
    from conftest import ray_cluster

    out: Dict[str, List[int]] = {name: [] for name in sides}
    work = Path(tempfile.mkdtemp(prefix="ray-numa-callgrind-"))
    try:
        with ray_cluster(fixture_root=fixture, num_gpus=num_gpus, num_cpus=4,
                         job_runtime_env=job_runtime_env, log_to_driver=False,
                         # a worker starts ~50x slower under valgrind
                         _system_config={"worker_register_timeout_seconds": 600}) as ray:
            @ray.remote(max_restarts=0)
            class Actor:
                def first(self):
                    os._exit(0)     # the count ends here; callgrind writes it on exit

            for r in range(runs):
                for name, (gpus, env) in sides.items():
                    folder = work / f"{r}-{name.replace(' ', '-')}"
                    folder.mkdir()
                    valgrind = (f"valgrind --tool=callgrind --separate-threads=yes "
                                f"--callgrind-out-file={folder}/callgrind.out.%p "
                                f"{sys.executable}")
                    actor = Actor.options(num_gpus=gpus, runtime_env=dict(
                        env, py_executable=valgrind,
                        env_vars={"PYTHONHASHSEED": "0", "BENCH_SIDE": f"{r}-{name}"}
                    )).remote()
                    try:
                        ray.get(actor.first.remote(), timeout=900)
                    except ray.exceptions.ActorDiedError:
                        pass        # expected: the first call exits the process
                    out[name].append(_main_thread_count(folder))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
