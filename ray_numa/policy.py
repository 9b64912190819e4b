"""Turn topology + target nodes + allowed resources + options into a plan.

Pure: no syscalls, no environment, no file handling of its own (per-CPU facts such
as SMT siblings come from :class:`Topology`, which reads them on first use so that a
mode that does not need them costs nothing). Every rule about CPU-less nodes,
memory-less nodes, cpusets, the CPU modes' split and multi-GPU spans lives here so
it can be unit tested on fixture topologies of machines we do not have.
"""
from __future__ import annotations

from collections import namedtuple
from typing import (TYPE_CHECKING, Callable, Dict, FrozenSet, Iterable, List, Optional,
                    Sequence, Tuple, Union)

from .cpusets import format_cpulist
from .decision import Plan, Skip  # noqa: F401  (policy's answers; re-exported)
from .sysfs import nodes_within

if TYPE_CHECKING:   # a worker with a prepared plan (prepared.py) never loads topology
    from .options import BindOptions
    from .topology import Allowed, Topology


# The values here, and every value class the binding path builds, are immutable like
# frozen dataclasses but ``collections.namedtuple`` subclasses (as psutil's results
# are), whose annotations only document the fields. Every GPU worker builds these
# classes at its first assignment; on Python 3.11 a frozen dataclass costs ~4.4 million
# instructions to build (its generated methods are each compiled), a
# ``typing.NamedTuple`` ~1.3 million (each string annotation is compiled into a
# ForwardRef), a namedtuple ~0.5 million. tests/test_topology.py keeps it so.
class Target(namedtuple("Target", "label node peer bus", defaults=(None, ""))):
    """Something to bind near: a GPU (by its node) or an explicitly named node."""
    __slots__ = ()
    label: str
    node: Optional[int]
    peer: Optional[int]          # index into ``peer_nodes`` (GPUs of the machine); None
    bus: str                     # a GPU's PCI function (sysfs form); default ""


#: The reason when "auto" has no GPU to bind near (quiet: CPU-only work).
NO_GPU = "no GPU assigned to this worker"

#: CPU modes that split a node among its GPUs, so they need every GPU's node
#: (``peer_nodes``); the others need only the targets' own.
SPLIT_MODES = ("exclusive", "core-complex")


def _nodes_text(nodes: Iterable[int]) -> str:
    return format_cpulist(nodes) or "none"


#: How a CPU-less node's CPU nodes were found (:func:`near_cpu_nodes`); ``TIE``:
#: several at the same distance and nothing that says which.
OWN, HMAT, SLIT, DEVICE, TIE = "own", "HMAT initiators", "distance", "device", "tie"


def near_cpu_nodes(topo: Topology, node: int) -> Tuple[Tuple[int, ...], str]:
    """The CPU nodes a node's work belongs on, and the rule that chose them.

    A node with CPUs is its own. A CPU-less node (HBM, CXL, NVM, a GPU's memory):
    the initiators the kernel names from ACPI HMAT, else the nearest CPU nodes by
    SLIT distance (GB200's HBM nodes), and where several tie, those of them that the
    device whose memory it is mostly covers (an NVIDIA GPU's PCI ``local_cpus``, as
    hwloc places these nodes; :func:`~ray_numa.sysfs.nodes_within`). A tie among one
    socket's nodes binds exactly those nodes, as hwloc's
    ``fixup_cpuless_node_locality_from_distances`` gives such a node the union of its
    nearest nodes' CPUs; across sockets, with nothing to break it, ``TIE``.

    hwloc applies the NVIDIA driver's locality first; here it only breaks a SLIT
    tie, on purpose: the same answer on every dump of hwloc's corpus, and a GPU
    node with one nearest CPU node (GB200) reads no driver file.
    """
    if topo.nodes[node].cpus:
        return (node,), OWN
    hmat = tuple(n for n in topo.initiators(node) if n in topo.nodes and topo.nodes[n].cpus)
    if hmat:
        return hmat, HMAT
    near = topo.nearest(node, lambda n: bool(n.cpus))
    if len(near) < 2:
        return near, SLIT
    device = nodes_within(topo.device_locality(node)[0],
                          {n: v.cpus for n, v in topo.nodes.items()}, among=near)
    if device:
        return device, DEVICE
    sockets = topo.packages_of(near)
    return near, SLIT if len(sockets) == 1 and None not in sockets else TIE


def cpu_nodes_for(topo: Topology, node: int) -> Tuple[int, ...]:
    """The node itself if it has CPUs, else its near CPU nodes (:func:`near_cpu_nodes`)."""
    return near_cpu_nodes(topo, node)[0]


def _mem_nodes_for(topo: Topology, node: int) -> Tuple[int, ...]:
    if topo.nodes[node].mem_kb > 0:
        return (node,)
    return topo.nearest(node, lambda n: n.mem_kb > 0)


def split_range(count: int, k: int, n: int) -> Tuple[int, int]:
    """Items ``[start, end)`` of ``count`` for member ``k`` of ``n`` (torch's rule).

    ``q, r = divmod(count, n)``: every member gets ``q`` and the ``r`` lowest-numbered
    members one more, so shares are contiguous, disjoint and differ by at most one.
    """
    q, r = divmod(count, n)
    start = k * q + min(k, r)
    return start, start + q + (1 if k < r else 0)


def _share_of(topo: Topology, target: Target,
              peer_nodes: Sequence[Optional[int]]) -> Tuple[int, int]:
    """Which share of its node a GPU gets: its place among the node's GPUs (PCI order).

    The peers are all GPUs of the machine on that node, not only those this process
    sees: under Ray each worker sees one GPU, and counting only visible GPUs (as
    torch does) would give every worker the whole node, so co-located workers would
    share cores.
    """
    if target.peer is None or target.node is None:
        return 0, 1
    mine = cpu_nodes_for(topo, target.node)
    same = [i for i, n in enumerate(peer_nodes)
            if n is not None and n in topo.nodes and cpu_nodes_for(topo, n) == mine]
    return (same.index(target.peer), len(same)) if target.peer in same else (0, 1)


def _groups(cpus: FrozenSet[int], key: Callable[[int], int]) -> Dict[int, FrozenSet[int]]:
    out: Dict[int, set] = {}
    for c in sorted(cpus):
        out.setdefault(key(c), set()).add(c)
    return {k: frozenset(v) for k, v in out.items()}


def _mode_cpus(topo: Topology, allowed: Allowed, options: BindOptions, target: Target,
               peer_nodes: Sequence[Optional[int]],
               notes: List[str]) -> Tuple[Tuple[int, ...], Union[FrozenSet[int], Skip]]:
    """The target's CPU nodes and its CPUs (or a Skip), allowed CPUs first.

    Cores and L3 groups are built from ``node CPUs & allowed CPUs`` and only then
    split, so a cpuset that leaves a few cores per node still gives every GPU some.
    A mode whose facts sysfs lacks falls back, with a note in the record: "socket"
    without package ids (-1 on POWER7) to "node", "core-complex" without cache
    information (VMs) to "exclusive". torch's ``torch/numa/binding.py`` does
    neither: it reads -1 as a socket, so socket mode binds every such node, and its
    core-complex raises FileNotFoundError listing a missing ``cpuN/cache``.
    """
    mode = options.cpus
    nodes = cpu_nodes_for(topo, target.node)
    if mode == "socket":
        packages = topo.packages_of(nodes)
        if None in packages:
            _note(notes, f"cpus: \"socket\": the socket of node(s) {_nodes_text(nodes)} is "
                  "unknown (sysfs physical_package_id is -1 or missing); CPUs of the node "
                  "instead")
        else:
            nodes = topo.nodes_of_packages(packages)
    pool = frozenset().union(*(topo.nodes[n].cpus for n in nodes)) & allowed.cpus
    if mode not in SPLIT_MODES or not pool:
        return nodes, pool
    if mode == "core-complex" and not all(topo.llc(c) for c in pool):
        _note(notes, "cpus: \"core-complex\": sysfs has no cache information for the "
              f"CPUs of node(s) {_nodes_text(nodes)} (no cpuN/cache, as in many VMs); "
              "\"exclusive\" instead")
        mode = "exclusive"
    k, n = _share_of(topo, target, peer_nodes)
    if mode == "exclusive":
        cores = [g for _, g in sorted(_groups(pool, lambda c: min(topo.siblings(c))).items())]
        if len(cores) < n:
            return nodes, Skip(
                f"only {len(cores)} allowed cores for {n} GPUs on node {_nodes_text(nodes)} "
                f"(cpus: \"exclusive\" needs one per GPU)",
                "widen the cpuset / affinity, or use cpus: \"node\" to share the node")
        lo, hi = split_range(len(cores), k, n)
        return nodes, frozenset().union(*cores[lo:hi])
    # core-complex: L3 groups with most allowed CPUs first, then lowest CPU; one per GPU in turn
    l3 = sorted(_groups(pool, lambda c: min(topo.llc(c))).items(),
                key=lambda item: (-len(item[1]), item[0]))
    return nodes, l3[k % len(l3)][1]


def _note(notes: List[str], text: str) -> None:
    if text not in notes:        # several targets may hit the same fallback
        notes.append(text)


def _memory(topo: Topology, allowed: Allowed, options: BindOptions,
            targets: Sequence[Target], cpu_nodes: Sequence[int],
            notes: List[str]) -> Union[Tuple[str, Tuple[int, ...], Optional[int]], Skip]:
    """(policy, nodes, home) for the memory side of the plan."""
    memory = options.memory
    if memory == "none":
        return "none", (), None
    if options.auto:
        base = [m for c in cpu_nodes for m in _mem_nodes_for(topo, c)]
        own = [m for c in cpu_nodes_for(topo, targets[0].node) for m in _mem_nodes_for(topo, c)]
    else:
        base, own = [], []
        for t in targets:
            near = [m for c in cpu_nodes_for(topo, t.node) for m in _mem_nodes_for(topo, c)]
            if topo.nodes[t.node].mem_kb > 0:
                near = [t.node]
            else:
                text = (f"node {t.node} has no memory; memory {memory} on node(s) "
                        f"{_nodes_text(near)} instead")
                if options.strict and memory == "bind":
                    return Skip(text, "name a node that has memory (numactl -H shows "
                                "each node's size)")
                notes.append(text)
            base += near
            own = own or near
    mem_nodes = tuple(sorted(set(base) & allowed.mems))
    if not mem_nodes:
        notes.append(f"memory node(s) {_nodes_text(base)} are not in Mems_allowed "
                     f"({_nodes_text(allowed.mems)}); memory left unbound")
        return "none", (), None
    home = next((m for m in own if m in mem_nodes), mem_nodes[0])
    if memory == "preferred" and len(mem_nodes) > 1:
        notes.append(f"'preferred' over nodes {_nodes_text(mem_nodes)}: MPOL_PREFERRED_MANY "
                     f"where the kernel has it (5.15+), else node {home}, the GPU's own")
    return memory, mem_nodes, home


#: Why "bind" on a one-CPU-node machine with memory-only nodes is not what it seems.
_ONE_CPU_NODE = ("one NUMA node with CPUs: memory \"bind\" to node %d would cut the worker "
                 "off memory-only node(s) %s (CXL, NVM)")


def _unplaceable(topo: Topology, targets: Sequence[Target],
                 explicit_cpus: bool) -> Optional[Skip]:
    """Why a target has no place on this machine: an unknown or missing node, or a
    CPU-less node whose CPUs nothing decides (:data:`TIE`) and none were named."""
    for t in targets:
        if t.node is None:
            raw = topo.pci_attr(t.bus, "numa_node") if t.bus else "-1"
            state = "missing" if raw is None else raw.strip("\0\n ") or "empty"
            return Skip(f"the NUMA node of {t.label} is unknown (sysfs numa_node is {state} "
                        "and NVML has none)",
                        "check the BIOS/ACPI proximity (SRAT) settings, or name the node: "
                        "numa_bind={'node': N}")
        whose = f" ({t.label}'s)" if t.peer is not None else ""
        if t.node not in topo.nodes:
            return Skip(f"NUMA node {t.node}{whose} does not exist; this machine has "
                        f"nodes {_nodes_text(topo.nodes)}")
        near, how = near_cpu_nodes(topo, t.node)
        if how == TIE and not explicit_cpus:
            return Skip(f"NUMA node {t.node}{whose} has no CPUs and is equally near nodes "
                        f"{_nodes_text(near)} by distance (SLIT), and no HMAT initiators or "
                        "device locality say which is its own",
                        "name the node whose CPUs to use, numa_bind={'node': N}, or the "
                        "CPUs, numa_bind={'node': %d, 'cpus': [...]}" % t.node)
    return None


def decide(topo: Topology, allowed: Allowed, options: BindOptions, targets: Sequence[Target],
           peer_nodes: Sequence[Optional[int]] = ()) -> Union[Plan, Skip]:
    """The binding for ``targets`` (the assigned GPUs, or explicit nodes)."""
    if not targets:
        return Skip(NO_GPU, quiet=True)
    explicit_cpus = not isinstance(options.cpus, str)
    with_cpus = [n for n, v in topo.nodes.items() if v.cpus]
    others: List[int] = []             # memory-only nodes beside the one CPU node
    spill = False                      # "bind" would cut off memory-only nodes
    if len(with_cpus) == 1:
        # One node with CPUs: "node" and "socket" have nothing to choose, whatever
        # memory-only nodes (CXL, NVM) exist, and a numa_node of -1 can only mean it;
        # "exclusive" and "core-complex" still split it among its GPUs (one L3 per GPU
        # on a workstation). A GPU whose own node is memory-only (GH200's HBM, named
        # by NVML) is planned as everywhere else.
        only = with_cpus[0]
        targets = [t._replace(node=only) if t.node is None else t for t in targets]
        peer_nodes = [only if p is None else p for p in peer_nodes]
        others = sorted(set(topo.nodes) - {only})
        if options.auto and all(t.node == only for t in targets):
            if options.cpus in ("node", "socket"):
                held = f" (node {only}; node(s) {_nodes_text(others)} hold memory only)" \
                    if others else ""
                return Skip(f"this machine has a single NUMA node{' with CPUs' if others else ''}"
                            f"{held}; nothing to bind", quiet=True)
            spill = bool(others)
    skip = _unplaceable(topo, targets, explicit_cpus)
    if skip is not None:
        return skip
    # GPUs span nodes when they bind to different CPUs: GB200's HBM nodes 2 and 10
    # hang off one Grace and do not span.
    homes = {cpu_nodes_for(topo, t.node) for t in targets}
    if len(homes) > 1 and options.span == "skip":
        return Skip(f"the GPUs span NUMA nodes {_nodes_text(n for h in homes for n in h)} "
                    "and span='skip'", quiet=True)
    if options.span == "first":
        targets = targets[:1]
    if not any(homes):
        return Skip(f"no NUMA node with CPUs is near {targets[0].label}")

    notes: List[str] = []
    for t in targets:
        near, how = near_cpu_nodes(topo, t.node)
        if how in (OWN, TIE) or how == SLIT and len(near) < 2:
            continue
        source = {HMAT: "the initiators ACPI HMAT names",
                  DEVICE: "the CPUs local to its GPU (PCI "
                          f"{topo.device_locality(t.node)[1] if how == DEVICE else ''})",
                  SLIT: "all equally near by distance (SLIT), on one socket"}[how]
        _note(notes, f"node {t.node} has no CPUs: CPUs of node(s) {_nodes_text(near)}, "
              f"{source}")
    if explicit_cpus:
        wanted = frozenset(options.cpus)
        cpu_nodes = sorted({topo.node_of_cpu(c) for c in wanted} - {None})
        cpus = wanted & allowed.cpus
    else:
        chosen = [_mode_cpus(topo, allowed, options, t, peer_nodes, notes) for t in targets]
        skip = next((d for _, d in chosen if isinstance(d, Skip)), None)
        if skip is not None:
            return skip
        cpu_nodes = sorted({n for nodes, _ in chosen for n in nodes})
        wanted = frozenset().union(*(topo.nodes[n].cpus for n in cpu_nodes))
        cpus = frozenset().union(*(d for _, d in chosen))
    if not cpus:
        chosen_by = "; ".join(n for n in notes if " has no CPUs: " in n)
        return Skip(f"none of the CPUs chosen for {targets[0].label} "
                    f"({format_cpulist(wanted) or 'none'}"
                    f"{': ' + chosen_by if chosen_by else ''}) are allowed to this process "
                    f"(allowed: {format_cpulist(allowed.cpus)})",
                    "widen the container's cpuset / the process affinity, or choose "
                    "a node whose CPUs it allows")
    allowed_here = wanted & allowed.cpus
    if allowed_here != wanted:
        notes.append(f"cpuset/affinity allows {len(allowed_here)} of the {len(wanted)} "
                     "CPUs chosen")

    mem = _memory(topo, allowed, options, targets, cpu_nodes, notes)
    if isinstance(mem, Skip):
        return mem
    if spill and mem[0] == "bind" and not options.strict:
        mem = ("preferred",) + mem[1:]
        notes.append(_ONE_CPU_NODE % (cpu_nodes[0], _nodes_text(others)) + ": \"preferred\" "
                     "instead, which keeps the worker's pages local and lets them spill there")
    elif spill and mem[0] == "bind":
        notes.append(_ONE_CPU_NODE % (cpu_nodes[0], _nodes_text(others)) + ": kept, as "
                     "strict asks (it never weakens a policy); memory: \"preferred\" reaches them")
    memory, mem_nodes, home = mem
    labels = ", ".join(t.label for t in targets)
    reason = f"{labels} -> CPUs of node(s) {_nodes_text(cpu_nodes)}"
    if memory != "none":
        reason += f", memory {memory} node(s) {_nodes_text(mem_nodes)}"
    return Plan(cpus=cpus, cpu_nodes=tuple(cpu_nodes), mem_nodes=mem_nodes,
                memory=memory, reason=reason, notes=tuple(notes), home=home)
