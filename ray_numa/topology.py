"""NUMA topology and what this process may use, read from sysfs and /proc.

Pure readers over a root directory (``/sys`` or a fixture's ``sys/``) so that the
same code describes this machine, a 2-socket DGX or a GB200 tray. Nothing here
changes the process; :mod:`ray_numa.apply` is the one place that does.
"""
from __future__ import annotations

import functools
import os
import sys
from collections import namedtuple
from pathlib import Path
from typing import (Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional,
                    Tuple)

from . import environment
from .cpusets import Limits, format_cpulist, process_limits
from .sysfs import (driver_numa_node, is_decimal, not_read, numbered, read_cpus, read_int,
                    read_sysfs, sysfs_list)


class NumaNode(namedtuple("NumaNode", "id cpus mem_kb distances")):
    __slots__ = ()
    id: int
    cpus: FrozenSet[int]
    mem_kb: int
    distances: Mapping[int, int]


class Topology:
    """NUMA nodes (read up front: a handful of files) and per-CPU facts read on first use.

    Node lists, distances and memory are all that ``cpus: "node"`` needs; a CPU's
    package, SMT siblings and last-level cache are read only when a mode asks for
    that CPU (socket, exclusive, core-complex), so binding one GPU on a 224-CPU box
    opens a few dozen files rather than thousands. The per-CPU answers are memoized,
    and policy code stays free of file handling. A reader with a cache rather than a
    value, so a plain class: no generated methods to build at import.
    """
    __slots__ = ("nodes", "online", "cpu_root", "problems", "_memo")

    def __init__(self, nodes: Mapping[int, NumaNode], online: FrozenSet[int],
                 cpu_root: Optional[Path] = None, problems: Iterable[str] = ()) -> None:
        self.nodes = nodes
        self.online = online
        self.cpu_root = cpu_root
        #: What sysfs did not answer sensibly (a file and why), for ``ray-numa show``:
        #: the reader falls back as hwloc does and says so here, never raises.
        #: Per-CPU reads add to it when they happen.
        self.problems: List[str] = list(problems)
        self._memo: Dict[Tuple[str, int], Any] = {}

    def __repr__(self) -> str:
        return f"Topology(nodes={sorted(self.nodes)}, online={format_cpulist(self.online)})"

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

    def _cpu_fact(self, kind: str, cpu: int,
                  read: Callable[[Path, List[str]], Any]) -> Any:
        key = (kind, cpu)
        if key not in self._memo:
            self._memo[key] = (read(self.cpu_root / f"cpu{cpu}", self.problems)
                               if self.cpu_root else None)
        return self._memo[key]

    def _shared_fact(self, kind: str, cpu: int,
                     read: Callable[[Path, List[str]], Any]) -> FrozenSet[int]:
        """A set of CPUs sharing something with ``cpu`` (a core, a cache): the kernel
        lists the same set for each member, so one read answers for all of them.
        Empty when sysfs does not say."""
        shared = self._cpu_fact(kind, cpu, read) or frozenset()
        for other in shared:
            self._memo.setdefault((kind, other), shared)
        return shared

    def package(self, cpu: int) -> Optional[int]:
        """The CPU's socket (``physical_package_id``); None when unknown: the file is
        missing or says -1, as POWER7 firmware does (hwloc's ``256ppc-8n8s4t`` dump),
        or is not a number (hwloc's "unknown" for an id it cannot read)."""
        return self._cpu_fact("package", cpu, _read_package)

    def siblings(self, cpu: int) -> FrozenSet[int]:
        """The hardware threads of the CPU's physical core; the CPU alone when sysfs
        does not say.

        From ``thread_siblings_list`` (``core_cpus_list`` on kernels that dropped
        it), or their hex maps where the list is missing, never from ``core_id``,
        which is only unique per die on some CPUs.
        """
        return self._shared_fact("siblings", cpu, _read_siblings) or frozenset([cpu])

    def llc(self, cpu: int) -> FrozenSet[int]:
        """CPUs sharing the CPU's highest-level Data or Unified cache (its L3 group).

        EMPTY when sysfs does not say (no ``cache`` directory, as in many VMs, or an
        unreadable ``shared_cpu_list``/``shared_cpu_map``): an unknown group, which
        the policy must not mistake for a one-CPU group.
        """
        return self._shared_fact("llc", cpu, _read_llc)

    def initiators(self, node: int) -> Tuple[int, ...]:
        """The nodes the kernel names as nearest initiators of ``node`` (ACPI HMAT).

        ``nodeN/access1/initiators`` (the nearest CPUs, Linux 5.10+) before
        ``access0`` (the nearest of CPUs and generic initiators such as a GPU), as
        hwloc's ``read_node_initiators`` does; the kernel lists each initiator as
        a ``nodeM`` link there (Documentation/admin-guide/mm/numaperf.rst)."""
        def read(base: str) -> Tuple[int, ...]:
            for access in ("access1", "access0"):
                entries = self._listdir(f"{base}/{access}/initiators")
                if entries is not None:
                    return tuple(sorted(int(e[4:]) for e in entries if e.startswith("node")
                                        and e[4:].isdecimal() and int(e[4:]) != node))
            return ()
        return self._fact("initiators", node, lambda: read(
            f"sys/devices/system/node/node{node}"))

    def device_locality(self, node: int) -> Tuple[FrozenSet[int], str]:
        """For an NVIDIA GPU's memory node, the CPUs local to that GPU and the file
        that said so (``local_cpus``, ``local_cpulist`` or ``numa_node``); else
        (empty, "").

        hwloc's rule (``topology-linux.c``, NVIDIA GPU NUMA nodes): the driver names
        the node in ``/proc/driver/nvidia/gpus/<bus>/numa_status`` ("Node: N"), and
        the GPU's PCI ``local_cpus`` is the node's locality. Read only where SLIT
        leaves a tie (POWER9 + V100: nodes 250-255 equally far from both sockets).
        """
        def read() -> Tuple[FrozenSet[int], str]:
            for bus in sorted(self._listdir("proc/driver/nvidia/gpus") or ()):
                status = self._text(f"proc/driver/nvidia/gpus/{bus}/numa_status")
                if driver_numa_node(status) == node:
                    return self._pci_cpus(bus)
            return frozenset(), ""
        return self._fact("device", node, read)

    def pci_attr(self, bus_id: str, name: str) -> Optional[str]:
        """A PCI function's sysfs attribute (``numa_node``, ``local_cpus``...); None
        when the file is missing or unreadable."""
        return self._text(f"sys/bus/pci/devices/{bus_id}/{name}")

    def _pci_cpus(self, bus_id: str) -> Tuple[FrozenSet[int], str]:
        """CPUs local to a PCI function and where from: ``local_cpus`` (what hwloc
        reads), its list twin ``local_cpulist``, else the CPUs of its ``numa_node``."""
        device = (self.cpu_root.parents[3] / "sys/bus/pci/devices" / bus_id
                  if self.cpu_root else None)
        for name in ("local_cpus", "local_cpulist"):
            listed = read_cpus(self.problems, device, name) if device is not None else None
            if listed:
                return listed, name
        node = read_int(self.pci_attr(bus_id, "numa_node"))
        return (self.nodes[node].cpus, "numa_node") if node in self.nodes \
            else (frozenset(), "")

    def _fact(self, kind: str, key: int, read: Callable[[], Any]) -> Any:
        """``read()``'s answer about a node, read once."""
        if (kind, key) not in self._memo:
            self._memo[(kind, key)] = read()
        return self._memo[(kind, key)]

    def _listdir(self, relative: str) -> Optional[List[str]]:
        """Entries of a directory under the filesystem root read (``/``, or the
        fixture's, which holds ``sys`` and ``proc``); None where it has none."""
        try:
            return os.listdir(self.cpu_root.parents[3] / relative) if self.cpu_root else None
        except OSError:
            return None

    def _text(self, relative: str) -> Optional[str]:
        """A file under the filesystem root read, as :func:`~ray_numa.sysfs.read_sysfs`
        reads it (NULs dropped, bad bytes replaced); None where it cannot be read."""
        return read_sysfs(self.cpu_root.parents[3] / relative) if self.cpu_root else None

    def packages_of(self, node_ids: Iterable[int]) -> FrozenSet[Optional[int]]:
        """Sockets of the nodes: one CPU per node says which (a node is on one socket)."""
        return frozenset(self.package(min(self.nodes[n].cpus)) for n in node_ids
                         if self.nodes[n].cpus)

    def nodes_of_packages(self, packages: FrozenSet[Optional[int]]) -> Tuple[int, ...]:
        return tuple(sorted(n.id for n in self.nodes.values()
                            if n.cpus and self.packages_of([n.id]) <= packages))


def _read(path: Path, default: str = "") -> str:
    """The file's text (NULs dropped, undecodable bytes replaced), ``default`` if
    it cannot be read: see :func:`ray_numa.sysfs.read_sysfs`."""
    text = read_sysfs(path)
    return default if text is None else text


def _read_package(cpu_dir: Path, problems: List[str]) -> Optional[int]:
    path = cpu_dir / "topology/physical_package_id"
    text = read_sysfs(path)
    value = read_int(text)
    if value is None and text is not None and text.strip():
        not_read(problems, path, text, "a package id")
    return value if value is not None and value >= 0 else None


def _cpu_id(cpu_dir: Path) -> int:
    return int(cpu_dir.name[len("cpu"):])


def _read_siblings(cpu_dir: Path, problems: List[str]) -> Optional[FrozenSet[int]]:
    return read_cpus(problems, cpu_dir / "topology", "thread_siblings_list",
                     "thread_siblings", "core_cpus_list", "core_cpus",
                     member=_cpu_id(cpu_dir))


def _mem_kb(meminfo: str) -> int:
    """``Node N MemTotal: <kB> kB`` (string methods, as :func:`.cpusets.status_field`)."""
    _, found, rest = meminfo.partition("MemTotal:")
    value = rest.split(maxsplit=1)[:1]
    return int(value[0]) if found and value and is_decimal(value[0]) else 0


def _read_llc(cpu_dir: Path, problems: List[str]) -> FrozenSet[int]:
    """Like torch's ``_get_logical_cpus_sharing_same_max_level_cache_as``: only
    ``indexN`` entries, only Data/Unified caches, the highest level wins.

    As hwloc reads caches (topology-linux.c, ``look_sysfscpu``): a cache without a
    ``type`` is Unified, one without a readable ``level`` is skipped, and an empty
    shared map (ia64's L3) means the core's threads. Empty (unknown) when there is no
    cache information or the highest cache's CPUs cannot be read.
    """
    try:
        entries = sorted(os.listdir(cpu_dir / "cache"))
    except OSError:
        return frozenset()
    caches = []
    for entry in entries:
        if not (entry.startswith("index") and entry[5:].isdecimal()):
            continue
        index = cpu_dir / "cache" / entry
        kind = _read(index / "type", "Unified").strip()
        level = read_int(read_sysfs(index / "level"))
        if kind in ("Data", "Unified") and level is not None:
            caches.append((level, index))
    if not caches:
        return frozenset()
    index = max(caches, key=lambda c: c[0])[1]
    shared = read_cpus(problems, index, "shared_cpu_list", "shared_cpu_map",
                       member=_cpu_id(cpu_dir))
    return (shared or _read_siblings(cpu_dir, problems)) if shared is not None \
        else frozenset()


def _online_cpus(cpu_root: Path, problems: List[str]) -> FrozenSet[int]:
    """``cpu/online``; where it is missing or garbage, as hwloc (``look_sysfscpu``):
    every ``cpuN`` directory whose own ``online`` file does not say 0."""
    text = read_sysfs(cpu_root / "online")
    online = sysfs_list(text)
    if online:
        return online
    if text is not None:
        not_read(problems, cpu_root / "online", text, "a CPU list")
    found = set()
    for name in numbered(cpu_root, "cpu"):
        flag = read_int(read_sysfs(cpu_root / f"cpu{name}/online"))
        if flag != 0:
            found.add(name)
    return frozenset(found)


def _node_ids(node_root: Path, problems: List[str]) -> List[int]:
    """``node/online``; where it is missing or garbage, every ``nodeN`` directory
    (hwloc does the same: offline nodes have no directory)."""
    text = read_sysfs(node_root / "online")
    ids = sysfs_list(text)
    if ids:
        return sorted(ids)
    if text is not None:
        not_read(problems, node_root / "online", text, "a node list")
    return numbered(node_root, "node")


def _distances(path: Path, node_ids: List[int], problems: List[str]) -> Dict[int, int]:
    """A node's SLIT row, one number per node in ``node_ids``; {} (the default
    distances) when the row is missing or does not fit."""
    text = read_sysfs(path)
    if text is None:
        return {}
    values = text.split()
    if len(values) != len(node_ids) or not all(is_decimal(v) for v in values):
        not_read(problems, path, text, f"{len(node_ids)} distances")
        return {}
    return dict(zip(node_ids, map(int, values)))


def read_topology(sys_root: Path) -> Topology:
    """Read NUMA nodes under ``sys_root`` (a ``/sys``-shaped directory).

    A kernel without NUMA support has no ``devices/system/node``: that is one node
    holding every online CPU, which is what the kernel itself assumes. A node whose
    CPUs cannot be read is left out, as hwloc leaves it out; every such fallback is
    in :attr:`Topology.problems`.
    """
    problems: List[str] = []
    cpu_root = sys_root / "devices/system/cpu"
    online = _online_cpus(cpu_root, problems)
    node_root = sys_root / "devices/system/node"
    nodes: Dict[int, NumaNode] = {}
    node_ids = _node_ids(node_root, problems)
    for nid in node_ids:
        ndir = node_root / f"node{nid}"
        cpus = read_cpus(problems, ndir, "cpulist", "cpumap")
        if cpus is None:
            problems.append(f"{ndir}: no readable cpulist or cpumap; node {nid} left out")
            continue
        nodes[nid] = NumaNode(
            id=nid,
            cpus=cpus & online,
            mem_kb=_mem_kb(_read(ndir / "meminfo")),
            distances=_distances(ndir / "distance", node_ids, problems),
        )
    if not nodes:
        nodes[0] = NumaNode(id=0, cpus=frozenset(online), mem_kb=1, distances={0: 10})
    return Topology(nodes=nodes, online=frozenset(online), cpu_root=cpu_root,
                    problems=problems)


@functools.lru_cache(maxsize=4)
def _cached_topology(sys_root: str) -> Topology:
    return read_topology(Path(sys_root))


def machine_topology() -> Topology:
    """This machine's topology (or the fixture's), read once per process."""
    return _cached_topology(str(environment.sys_root()))


class Allowed(namedtuple("Allowed", "cpus mems")):
    """What the cgroup cpuset and the current affinity leave to this process."""
    __slots__ = ()
    cpus: FrozenSet[int]
    mems: FrozenSet[int]


def allowed_from(limits: Limits, topology: Topology) -> Allowed:
    """Allowed CPUs/mems from :data:`~ray_numa.cpusets.Limits`: the status lists (all
    of the topology where absent), the CPUs narrowed by the affinity if given."""
    cpus_text, mems_text, affinity = limits
    cpus = sysfs_list(cpus_text) or topology.online
    mems = sysfs_list(mems_text) or frozenset(topology.nodes)
    if affinity is not None:
        cpus = cpus & frozenset(affinity)
    return Allowed(cpus=frozenset(cpus), mems=frozenset(mems))


def process_allowed(topology: Topology, limits: Optional[Limits] = None) -> Allowed:
    """Allowed resources of this process: now, or as ``limits`` read earlier.

    On a fixture the real affinity describes another machine, so only the fixture's
    ``proc/self/status`` counts (see :func:`ray_numa.cpusets.process_limits`).
    """
    return allowed_from(limits or process_limits(), topology)


_open_logs: List[List[str]] = []
_hook_installed = False


#: The audit events of a read of the filesystem: a file, or a directory's entries
#: (``os.listdir``; ``os.scandir``, which ``Path.iterdir``/``glob`` use).
_READ_EVENTS = ("open", "os.listdir", "os.scandir")


def _audit_open(event: str, args: Tuple[Any, ...]) -> None:
    if event in _READ_EVENTS and _open_logs and args and \
            isinstance(args[0], (str, bytes, Path)):
        _open_logs[-1].append(os.fsdecode(args[0]))


def opened_files(fn: Callable[[], Any]) -> Tuple[Any, List[str]]:
    """Run ``fn`` and list the files and directories it read (``sys.addaudithook``
    "open", "os.listdir" and "os.scandir" events).

    A count, not a time: the benchmark and the tests use it to keep binding cheap on
    big machines without timing noise. The hook is installed once per process and
    records only while a call is running.
    """
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit_open)
        _hook_installed = True
    _open_logs.append([])
    try:
        result = fn()
    finally:
        log = _open_logs.pop()
    return result, log
