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
from .cpusets import Limits, format_cpulist, parse_cpulist, process_limits


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
    __slots__ = ("nodes", "online", "cpu_root", "_memo")

    def __init__(self, nodes: Mapping[int, NumaNode], online: FrozenSet[int],
                 cpu_root: Optional[Path] = None) -> None:
        self.nodes = nodes
        self.online = online
        self.cpu_root = cpu_root
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

    def _cpu_fact(self, kind: str, cpu: int, read: Callable[[Path], Any]) -> Any:
        key = (kind, cpu)
        if key not in self._memo:
            self._memo[key] = read(self.cpu_root / f"cpu{cpu}") if self.cpu_root else None
        return self._memo[key]

    def _shared_fact(self, kind: str, cpu: int, read: Callable[[Path], Any]) -> FrozenSet[int]:
        """A set of CPUs sharing something with ``cpu`` (a core, a cache): the kernel
        lists the same set for each member, so one read answers for all of them.
        Empty when sysfs does not say."""
        shared = self._cpu_fact(kind, cpu, read) or frozenset()
        for other in shared:
            self._memo.setdefault((kind, other), shared)
        return shared

    def package(self, cpu: int) -> Optional[int]:
        """The CPU's socket (``physical_package_id``); None when unknown: the file is
        missing or says -1, as POWER7 firmware does (hwloc's ``256ppc-8n8s4t`` dump)."""
        value = self._cpu_fact("package", cpu, lambda d: _read(
            d / "topology/physical_package_id").strip("\0\n "))
        return int(value) if value.isdecimal() else None

    def siblings(self, cpu: int) -> FrozenSet[int]:
        """The hardware threads of the CPU's physical core.

        From ``thread_siblings_list`` (``core_cpus_list`` on kernels that dropped
        it), never from ``core_id``, which is only unique per die on some CPUs.
        """
        return self._shared_fact("siblings", cpu, lambda d: parse_cpulist(
            _read(d / "topology/thread_siblings_list")
            or _read(d / "topology/core_cpus_list"))) or frozenset([cpu])

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

    def device_cpus(self, node: int) -> FrozenSet[int]:
        """For an NVIDIA GPU's memory node, the CPUs local to that GPU; else empty.

        hwloc's rule (``topology-linux.c``, NVIDIA GPU NUMA nodes): the driver names
        the node in ``/proc/driver/nvidia/gpus/<bus>/numa_status`` ("Node: N"), and
        the GPU's PCI ``local_cpus`` is the node's locality. Read only where SLIT
        leaves a tie (POWER9 + V100: nodes 250-255 equally far from both sockets).
        """
        def read() -> FrozenSet[int]:
            for bus in sorted(self._listdir("proc/driver/nvidia/gpus") or ()):
                status = self._text(f"proc/driver/nvidia/gpus/{bus}/numa_status") or ""
                _, found, rest = status.partition("Node:")
                if found and rest.split()[:1] == [str(node)]:
                    return self._pci_cpus(bus)
            return frozenset()
        return self._fact("device", node, read)

    def pci_attr(self, bus_id: str, name: str) -> Optional[str]:
        """A PCI function's sysfs attribute (``numa_node``, ``local_cpus``...); None
        when the file is missing or unreadable."""
        return self._text(f"sys/bus/pci/devices/{bus_id}/{name}")

    def _pci_cpus(self, bus_id: str) -> FrozenSet[int]:
        """CPUs local to a PCI function: ``local_cpulist``, its hex twin
        ``local_cpus``, else the CPUs of its ``numa_node``."""
        listed = (self.pci_attr(bus_id, "local_cpulist") or "").strip("\0\n ")
        if listed:
            return parse_cpulist(listed)
        mask = (self.pci_attr(bus_id, "local_cpus") or "").strip("\0\n ").replace(",", "")
        try:
            bits = int(mask, 16)
        except ValueError:
            node = (self.pci_attr(bus_id, "numa_node") or "").strip("\0\n ")
            return self.nodes[int(node)].cpus if node.isdecimal() and int(node) in self.nodes \
                else frozenset()
        return frozenset(i for i in range(bits.bit_length()) if bits >> i & 1)

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
        try:
            return (self.cpu_root.parents[3] / relative).read_text() if self.cpu_root else None
        except OSError:
            return None

    def packages_of(self, node_ids: Iterable[int]) -> FrozenSet[Optional[int]]:
        """Sockets of the nodes: one CPU per node says which (a node is on one socket)."""
        return frozenset(self.package(min(self.nodes[n].cpus)) for n in node_ids
                         if self.nodes[n].cpus)

    def nodes_of_packages(self, packages: FrozenSet[Optional[int]]) -> Tuple[int, ...]:
        return tuple(sorted(n.id for n in self.nodes.values()
                            if n.cpus and self.packages_of([n.id]) <= packages))


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):   # a binary or garbled attribute: unread
        return default


def _mem_kb(meminfo: str) -> int:
    """``Node N MemTotal: <kB> kB`` (string methods, as :func:`.cpusets.status_field`)."""
    _, found, rest = meminfo.partition("MemTotal:")
    value = rest.split(maxsplit=1)[:1]
    return int(value[0]) if found and value and value[0].isdigit() else 0


def _read_llc(cpu_dir: Path) -> FrozenSet[int]:
    """Like torch's ``_get_logical_cpus_sharing_same_max_level_cache_as``: only
    ``indexN`` entries, only Data/Unified caches, the highest level wins."""
    try:
        entries = os.listdir(cpu_dir / "cache")
    except OSError:
        return frozenset()
    best_level, shared = -1, frozenset()
    for entry in entries:
        if not (entry.startswith("index") and entry[5:].isdecimal()):
            continue
        index = cpu_dir / "cache" / entry
        if _read(index / "type").strip() not in ("Data", "Unified"):
            continue
        level = int(_read(index / "level", "0").strip() or 0)
        if level > best_level:
            best_level, shared = level, parse_cpulist(_read(index / "shared_cpu_list"))
    return shared


def read_topology(sys_root: Path) -> Topology:
    """Read NUMA nodes under ``sys_root`` (a ``/sys``-shaped directory).

    A kernel without NUMA support has no ``devices/system/node``: that is one node
    holding every online CPU, which is what the kernel itself assumes.
    """
    cpu_root = sys_root / "devices/system/cpu"
    online = parse_cpulist(_read(cpu_root / "online", "0"))
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
    return Topology(nodes=nodes, online=frozenset(online), cpu_root=cpu_root)


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
    cpus = parse_cpulist(cpus_text) or topology.online
    mems = parse_cpulist(mems_text) or frozenset(topology.nodes)
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


def _audit_open(event: str, args: Tuple[Any, ...]) -> None:
    if event == "open" and _open_logs and args and isinstance(args[0], (str, bytes, Path)):
        _open_logs[-1].append(os.fsdecode(args[0]))


def opened_files(fn: Callable[[], Any]) -> Tuple[Any, List[str]]:
    """Run ``fn`` and list the files it opened (``sys.addaudithook`` "open" events).

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
