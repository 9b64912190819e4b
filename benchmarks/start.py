"""Creation to first method call of a batch of actors, with and without numa_bind,
on one real local Ray cluster.

Every side of a comparison runs in every round, in an order that alternates between
rounds, and each (round, side) gets its own ``env_vars`` value: a distinct
runtime_env, so no side can reuse a worker another one started. The first call
returns only the pid (no ray_numa import on either side); whether the actors are
really bound is checked afterwards, outside the timed part.

Wall time on a shared 2-core machine swings by tens of percent with other load, so
each worker also reports the CPU time its process used up to that first call
(``time.process_time``): interpreter, Ray, the bootstrap and the bind, far less
sensitive to what else runs on the machine.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Side:
    num_gpus: float
    runtime_env: Mapping            # on top of the job's runtime_env
    wrapped: bool                   # the plugin started the worker (RAY_NUMA_SPEC set)
    bound: bool                     # current_binding().status == "bound"


@dataclasses.dataclass
class Timings:
    seconds: Dict[str, List[float]]     # per round: the batch's wall time
    cpu: Dict[str, List[float]]         # per round: mean CPU seconds per worker
    pids: Dict[str, List[int]]

    def median(self, side: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.seconds)[side])

    def ratio(self, side: str, base: str, cpu: bool = False) -> float:
        """Median of the per-round ratios: each round's pair shares the machine's load."""
        return statistics.median(self.ratios(side, base, cpu))

    def ratios(self, side: str, base: str, cpu: bool = False) -> List[float]:
        data = self.cpu if cpu else self.seconds
        return [a / b for a, b in zip(data[side], data[base])]


def run(sides: Mapping[str, Side], actors: int, rounds: int, fixture: Path,
        num_gpus: int, job_runtime_env: Optional[Mapping] = None) -> Timings:
    from conftest import ray_cluster

    out = Timings(*({name: [] for name in sides} for _ in range(3)))
    with ray_cluster(fixture_root=fixture, num_gpus=num_gpus, num_cpus=2 * actors,
                     job_runtime_env=job_runtime_env, log_to_driver=False) as ray:
        @ray.remote
        class Actor:
            def pid(self):
                import os
                return os.getpid(), time.process_time()

            def status(self):
                import os
                import ray_numa
                from ray_numa.environment import SPEC_ENV
                return bool(os.environ.get(SPEC_ENV)), \
                    ray_numa.current_binding().status == "bound"

        warm = Actor.options(num_gpus=0).remote()   # the agent and raylet are up
        ray.get(warm.pid.remote(), timeout=600)
        ray.kill(warm)
        names = list(sides)
        for r in range(rounds):
            for name in _order(names, r):
                side = sides[name]
                env = dict(side.runtime_env)
                env["env_vars"] = {"BENCH_ROUND": f"{r}-{name}"}
                t0 = time.perf_counter()
                handles = [Actor.options(num_gpus=side.num_gpus, runtime_env=env).remote()
                           for _ in range(actors)]
                firsts = ray.get([h.pid.remote() for h in handles], timeout=600)
                out.seconds[name].append(time.perf_counter() - t0)
                out.pids[name] += [pid for pid, _ in firsts]
                out.cpu[name].append(statistics.mean(cpu for _, cpu in firsts))
                seen = set(ray.get([h.status.remote() for h in handles], timeout=600))
                if seen != {(side.wrapped, side.bound)}:
                    raise AssertionError(f"{name}: actors report (wrapped, bound) {seen}")
                for h in handles:
                    ray.kill(h)
                time.sleep(0.5)     # let the killed workers exit before the next side
    return out


def _order(names: Sequence[str], r: int) -> List[str]:
    """Rotate the sides each round, so none is always first after a pause."""
    k = r % len(names)
    return list(names[k:]) + list(names[:k])
