"""Creation to first method call of a batch of actors, with and without numa_bind,
on one real local Ray cluster.

A comparison is a pair of sides (say "GPU auto" and "GPU off"). In every round each
side starts a batch, one after the other, in an order from a Williams design
(:func:`order`): over ``len(sides)`` rounds every side starts once in each place and
right after each other side once, so neither a drift in the machine's speed nor what
the previous batch left behind favours one side. (Flipping each pair and rotating the
pairs in step, as before, put "GPU auto" and "CPU off" always first or last in a
round and their partners always in the middle.) Each
(round, side) gets its own ``env_vars`` value: a distinct runtime_env, so no side
can reuse a worker another one started. The two sides are not started together:
the raylet starts only as many workers at once as the machine has CPUs, and
whichever side's runtime_env the agent readies first would take every slot, so a
mixed batch measures queue order, not cost (tried: it printed 2.3).

A batch's figure is its wall time from creation until every actor answered its
first call, and the mean over its workers of the CPU time each used up to that call
(``time.process_time``, reported from inside the worker: interpreter, Ray, the
bootstrap and the bind). A comparison's figure is the median over rounds of the
per-round ratio, with a distribution-free confidence interval. The first call
imports no ray_numa; whether the actors are really bound is checked afterwards,
outside the timed part.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import psutil


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
    faults: Dict[str, List[int]]        # per worker: minor page faults to the first call

    def median(self, side: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.seconds)[side])

    def ratio(self, side: str, base: str, cpu: bool = False) -> float:
        """Median of the per-round ratios: each round's pair shares the machine."""
        return statistics.median(self.ratios(side, base, cpu))

    def ratios(self, side: str, base: str, cpu: bool = False) -> List[float]:
        data = self.cpu if cpu else self.seconds
        return [a / b for a, b in zip(data[side], data[base])]

    def interval(self, side: str, base: str, cpu: bool = False) -> Tuple[float, float]:
        """A distribution-free ~95 % confidence interval of the median ratio: the
        order statistics around the median that a binomial(n, 1/2) puts 95 % between
        (normal approximation); the whole range when there are too few rounds."""
        ratios = sorted(self.ratios(side, base, cpu))
        n = len(ratios)
        k = max(0, math.floor((n - 1.96 * math.sqrt(n)) / 2))
        return ratios[k], ratios[n - 1 - k]


def run(pairs: Sequence[Tuple[str, str]], sides: Mapping[str, Side], actors: int,
        rounds: int, fixture: Path, num_gpus: int,
        job_runtime_env: Optional[Mapping] = None) -> Timings:
    """``pairs``: the comparisons, each two names from ``sides``; ``actors`` per batch."""
    from conftest import ray_cluster

    out = Timings(*({name: [] for name in sides} for _ in range(4)))
    with ray_cluster(fixture_root=fixture, num_gpus=num_gpus, num_cpus=2 * actors,
                     job_runtime_env=job_runtime_env, log_to_driver=False) as ray:
        @ray.remote
        class Actor:
            def first(self):
                import os
                import resource
                return (os.getpid(), time.process_time(),
                        resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

            def status(self):
                import os
                import ray_numa
                from ray_numa.environment import SPEC_ENV
                return bool(os.environ.get(SPEC_ENV)), \
                    ray_numa.current_binding().status == "bound"

        warm = Actor.options(num_gpus=0).remote()   # the agent and raylet are up
        ray.get(warm.first.remote(), timeout=600)
        ray.kill(warm)
        names = list(dict.fromkeys(name for pair in pairs for name in pair))
        for r in range(rounds):
            for name in order(names, r):
                side = sides[name]
                env = dict(side.runtime_env)
                env["env_vars"] = {"BENCH_ROUND": f"{r}-{name}"}
                t0 = time.perf_counter()
                handles = [Actor.options(num_gpus=side.num_gpus, runtime_env=env).remote()
                           for _ in range(actors)]
                firsts = ray.get([h.first.remote() for h in handles], timeout=600)
                out.seconds[name].append(time.perf_counter() - t0)
                out.cpu[name].append(statistics.mean(cpu for _, cpu, _ in firsts))
                out.pids[name] += [pid for pid, _, _ in firsts]
                out.faults[name] += [faults for _, _, faults in firsts]
                seen = set(ray.get([h.status.remote() for h in handles], timeout=600))
                if seen != {(side.wrapped, side.bound)}:
                    raise AssertionError(f"{name}: actors report (wrapped, bound) {seen}")
                for h in handles:
                    ray.kill(h)
                _exited(pids=[pid for pid, _, _ in firsts])
    return out


def _exited(pids: Sequence[int], timeout: float = 30) -> None:
    """Wait until the killed workers have exited (and a moment more), so that no batch
    shares the CPUs with the previous batch's shutdown (a fixed pause did not always
    cover it on a loaded 2-vCPU machine)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=timeout)
    time.sleep(0.2)


def order(names: Sequence[str], r: int) -> List[str]:
    """Round ``r``'s order of an even number of sides: row ``r mod n`` of a Williams
    Latin square (first row 0, 1, n-1, 2, n-2, ...; each next row adds 1 mod n), in
    which every side takes each place once and follows every other side once."""
    n = len(names)
    if n % 2:
        raise ValueError("a Williams square of this form needs an even number of sides")
    first = [0] + [(k + 1) // 2 if k % 2 else n - k // 2 for k in range(1, n)]
    return [names[(i + r) % n] for i in first]
