"""NUMA topology and what this process may use, read from sysfs and /proc.

Pure readers over a root directory (``/sys`` or a fixture's ``sys/``) so that the
same code describes this machine, a 2-socket DGX or a GB200 tray. Nothing here
changes the process; :mod:`ray_numa.apply` is the one place that does.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple

from . import environment


def parse_cpulist(text: str) -> FrozenSet[int]:
    """Parse the kernel's list format (``0-3,8,10-11``) used by sysfs and /proc."""
    out = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def format_cpulist(ids: Iterable[int]) -> str:
    """Inverse of :func:`parse_cpulist`, the form numactl and the kernel accept."""
    ranges: List[Tuple[int, int]] = []
    for i in sorted(set(ids)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@dataclasses.dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: FrozenSet[int]
    mem_kb: int
    distances: Mapping[int, int]


@dataclasses.dataclass(frozen=True)
class Cpu:
    id: int
    package: int
    core: Tuple[int, int]          # (package, core_id): SMT siblings share it
    l3: FrozenSet[int]             # CPUs sharing this CPU's last-level cache


@dataclasses.dataclass(frozen=True)
class Topology:
    nodes: Mapping[int, NumaNode]
    cpus: Mapping[int, Cpu]

    def node_of_cpu(self, cpu: int) -> Optional[int]:
        return next((n.id for n in self.nodes.values() if cpu in n.cpus), None)

    def distance(self, a: int, b: int) -> int:
        return self.nodes[a].distances.get(b, 10 if a == b else 20)

    def nearest(self, node: int, keep: Callable[[NumaNode], bool]) -> Tuple[int, ...]:
        """Nodes passing ``keep`` at the smallest distance from ``node`` (ties kept)."""
        candidates = [n.id for n in self.nodes.values() if keep(n)]
        if not candidates:
            return ()
        best = min(self.distance(node, c) for c in candidates)
        return tuple(sorted(c for c in candidates if self.distance(node, c) == best))

    def packages_of(self, node_ids: Iterable[int]) -> FrozenSet[int]:
        return frozenset(self.cpus[c].package for n in node_ids
                         for c in self.nodes[n].cpus if c in self.cpus)

    def nodes_of_packages(self, packages: FrozenSet[int]) -> Tuple[int, ...]:
        return tuple(sorted(n.id for n in self.nodes.values()
                            if n.cpus and self.packages_of([n.id]) <= packages))


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def _mem_kb(meminfo: str) -> int:
    match = re.search(r"MemTotal:\s+(\d+)\s*kB", meminfo)
    return int(match.group(1)) if match else 0


def _read_cpu(cpu_dir: Path, cpu: int) -> Cpu:
    topo = cpu_dir / "topology"
    package = int(_read(topo / "physical_package_id", "0").strip() or 0)
    core_id = int(_read(topo / "core_id", str(cpu)).strip() or cpu)
    l3: FrozenSet[int] = frozenset([cpu])
    best_level = -1
    for index in sorted((cpu_dir / "cache").glob("index*")):
        level = int(_read(index / "level", "0").strip() or 0)
        if _read(index / "type").strip() != "Instruction" and level > best_level:
            shared = _read(index / "shared_cpu_list").strip()
            if shared:
                best_level, l3 = level, parse_cpulist(shared)
    return Cpu(id=cpu, package=package, core=(package, core_id), l3=l3)


def read_topology(sys_root: Path) -> Topology:
    """Read NUMA nodes and CPUs under ``sys_root`` (a ``/sys``-shaped directory).

    A kernel without NUMA support has no ``devices/system/node``: that is one node
    holding every online CPU, which is what the kernel itself assumes.
    """
    cpu_root = sys_root / "devices/system/cpu"
    online = parse_cpulist(_read(cpu_root / "online", "0"))
    cpus = {c: _read_cpu(cpu_root / f"cpu{c}", c) for c in sorted(online)}
    node_root = sys_root / "devices/system/node"
    nodes: Dict[int, NumaNode] = {}
    node_ids = sorted(parse_cpulist(_read(node_root / "online")))
    for nid in node_ids:
        ndir = node_root / f"node{nid}"
        dist = [int(d) for d in _read(ndir / "distance").split()]
        nodes[nid] = NumaNode(
            id=nid,
            cpus=parse_cpulist(_read(ndir / "cpulist")) & online,
            mem_kb=_mem_kb(_read(ndir / "meminfo")),
            distances=dict(zip(node_ids, dist)),
        )
    if not nodes:
        nodes[0] = NumaNode(id=0, cpus=frozenset(online), mem_kb=1, distances={0: 10})
    return Topology(nodes=nodes, cpus=cpus)


@functools.lru_cache(maxsize=4)
def _cached_topology(sys_root: str) -> Topology:
    return read_topology(Path(sys_root))


def machine_topology() -> Topology:
    """This machine's topology (or the fixture's), read once per process."""
    return _cached_topology(str(environment.sys_root()))


@dataclasses.dataclass(frozen=True)
class Allowed:
    """What the cgroup cpuset and the current affinity leave to this process."""
    cpus: FrozenSet[int]
    mems: FrozenSet[int]


def _status_field(status: str, name: str) -> Optional[FrozenSet[int]]:
    match = re.search(rf"^{name}:\s*(\S+)", status, re.M)
    return parse_cpulist(match.group(1)) if match else None


def read_allowed(status_path: Optional[Path], topology: Topology,
                 affinity: Optional[FrozenSet[int]]) -> Allowed:
    """Allowed CPUs/mems: /proc status lists, narrowed by ``affinity`` if given."""
    status = _read(status_path) if status_path is not None else ""
    cpus = _status_field(status, "Cpus_allowed_list") or frozenset(topology.cpus)
    mems = _status_field(status, "Mems_allowed_list") or frozenset(topology.nodes)
    if affinity is not None:
        cpus = cpus & affinity
    return Allowed(cpus=frozenset(cpus), mems=frozenset(mems))


def process_allowed(topology: Topology) -> Allowed:
    """Allowed resources of this process right now (fixture-aware).

    On a fixture the real affinity describes another machine, so only the fixture's
    ``proc/self/status`` counts.
    """
    affinity = None if environment.simulated() else frozenset(os.sched_getaffinity(0))
    return read_allowed(environment.proc_status_path(), topology, affinity)
