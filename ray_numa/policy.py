"""Turn topology + target nodes + allowed resources + options into a plan.

Pure: no files, no syscalls, no environment. Every rule about CPU-less nodes,
memory-less nodes, cpusets and multi-GPU spans lives here so it can be unit tested
on fixture topologies of machines we do not have.
"""
from __future__ import annotations

import dataclasses
from typing import FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

from .options import BindOptions
from .topology import Allowed, Topology, format_cpulist


@dataclasses.dataclass(frozen=True)
class Target:
    """Something to bind near: a GPU (by its node) or an explicitly named node."""
    label: str
    node: Optional[int]
    peer: Optional[int] = None   # index into ``peer_nodes`` (GPUs of the machine)


@dataclasses.dataclass(frozen=True)
class Plan:
    cpus: FrozenSet[int]
    cpu_nodes: Tuple[int, ...]
    mem_nodes: Tuple[int, ...]
    memory: str                  # bind | preferred | interleave | none
    reason: str
    notes: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Skip:
    """Binding is impossible or pointless; ``fix`` says what the user can do."""
    reason: str
    fix: str = ""
    quiet: bool = False          # expected (no GPU, span="skip"): no warning

    def message(self) -> str:
        return f"{self.reason}; {self.fix}" if self.fix else self.reason


Decision = Union[Plan, Skip]


def _nodes_text(nodes: Iterable[int]) -> str:
    return format_cpulist(nodes) or "none"


def cpu_nodes_for(topo: Topology, node: int) -> Tuple[int, ...]:
    """The node itself if it has CPUs, else the nearest nodes that do (GB200 HBM)."""
    if topo.nodes[node].cpus:
        return (node,)
    return topo.nearest(node, lambda n: bool(n.cpus))


def _mem_nodes_for(topo: Topology, node: int) -> Tuple[int, ...]:
    if topo.nodes[node].mem_kb > 0:
        return (node,)
    return topo.nearest(node, lambda n: n.mem_kb > 0)


def _share(items: Sequence[FrozenSet[int]], k: int, n: int) -> FrozenSet[int]:
    """Part ``k`` of ``n`` of an ordered list of CPU groups, as even as possible."""
    lo, hi = k * len(items) // n, (k + 1) * len(items) // n
    return frozenset().union(*items[lo:hi]) if hi > lo else frozenset()


def _share_of(topo: Topology, target: Target,
              peer_nodes: Sequence[Optional[int]]) -> Tuple[int, int]:
    """Which share of its node a GPU gets: its place among the node's GPUs."""
    if target.peer is None or target.node is None:
        return 0, 1
    mine = cpu_nodes_for(topo, target.node)
    same = [i for i, n in enumerate(peer_nodes)
            if n is not None and n in topo.nodes and cpu_nodes_for(topo, n) == mine]
    return (same.index(target.peer), len(same)) if target.peer in same else (0, 1)


def _mode_cpus(topo: Topology, options: BindOptions, target: Target,
               cpu_nodes: Tuple[int, ...], peer_nodes: Sequence[Optional[int]]) -> FrozenSet[int]:
    node_cpus = frozenset().union(*(topo.nodes[n].cpus for n in cpu_nodes))
    if options.cpus in ("node", "socket"):
        return node_cpus
    k, n = _share_of(topo, target, peer_nodes)
    if options.cpus == "exclusive":
        cores = {}
        for c in sorted(node_cpus):
            cores.setdefault(topo.cpus[c].core if c in topo.cpus else (0, c), set()).add(c)
        groups = sorted((frozenset(g) for g in cores.values()), key=min)
        return _share(groups, k, n)
    # core-complex: the last-level-cache groups of the node, one per GPU in turn
    l3 = sorted({topo.cpus[c].l3 & node_cpus for c in node_cpus if c in topo.cpus}, key=min)
    return l3[k % len(l3)] if l3 else node_cpus


def decide(topo: Topology, allowed: Allowed, options: BindOptions,
           targets: Sequence[Target], peer_nodes: Sequence[Optional[int]] = ()) -> Decision:
    """The binding for ``targets`` (the assigned GPUs, or explicit nodes)."""
    if not targets:
        return Skip("no GPU assigned to this worker", quiet=True)
    explicit_cpus = not isinstance(options.cpus, str)
    if len(topo.nodes) == 1 and options.auto and not explicit_cpus:
        return Skip("this machine has a single NUMA node; nothing to bind")
    for t in targets:
        if t.node is None:
            return Skip(f"the NUMA node of {t.label} is unknown (sysfs numa_node is -1 "
                        "and NVML has none)",
                        "check the BIOS/ACPI proximity (SRAT) settings, or name the node: "
                        "numa_bind={'node': N}")
        if t.node not in topo.nodes:
            whose = f" ({t.label}'s)" if t.peer is not None else ""
            return Skip(f"NUMA node {t.node}{whose} does not exist; this machine has "
                        f"nodes {_nodes_text(topo.nodes)}")
    distinct = sorted({t.node for t in targets})
    if len(distinct) > 1 and options.span == "skip":
        return Skip(f"the GPUs span NUMA nodes {_nodes_text(distinct)} and span='skip'",
                    quiet=True)
    if options.span == "first":
        targets = targets[:1]

    cpu_nodes = sorted({c for t in targets for c in cpu_nodes_for(topo, t.node)})
    if not cpu_nodes:
        return Skip(f"no NUMA node with CPUs is near {targets[0].label}")
    if options.cpus == "socket":
        cpu_nodes = list(topo.nodes_of_packages(topo.packages_of(cpu_nodes)))
    notes: List[str] = []
    if explicit_cpus:
        wanted = frozenset(options.cpus)
        cpu_nodes = sorted({topo.node_of_cpu(c) for c in wanted} - {None})
    else:
        wanted = frozenset().union(*(
            _mode_cpus(topo, options, t, tuple(cpu_nodes_for(topo, t.node))
                       if options.cpus != "socket" else tuple(cpu_nodes), peer_nodes)
            for t in targets))
    cpus = wanted & allowed.cpus
    if not cpus:
        return Skip(f"none of the CPUs chosen for {targets[0].label} "
                    f"({format_cpulist(wanted) or 'none'}) are allowed to this process "
                    f"(allowed: {format_cpulist(allowed.cpus)})",
                    "widen the container's cpuset / the process affinity, or choose "
                    "a node whose CPUs it allows")
    if cpus != wanted:
        notes.append(f"cpuset/affinity allows {len(cpus)} of the {len(wanted)} CPUs chosen")

    memory = options.memory
    if memory == "none":
        mem_nodes: Tuple[int, ...] = ()
    else:
        if not options.auto and all(topo.nodes[t.node].mem_kb > 0 for t in targets):
            base = [t.node for t in targets]
        else:
            base = [m for c in cpu_nodes for m in _mem_nodes_for(topo, c)]
        mem_nodes = tuple(sorted(set(base) & allowed.mems))
        if not mem_nodes:
            notes.append(f"memory node(s) {_nodes_text(base)} are not in Mems_allowed "
                         f"({_nodes_text(allowed.mems)}); memory left unbound")
            memory = "none"
        elif memory == "preferred" and len(mem_nodes) > 1:
            notes.append(f"'preferred' takes one node: preferring node {mem_nodes[0]}")
            mem_nodes = mem_nodes[:1]
    labels = ", ".join(t.label for t in targets)
    reason = f"{labels} -> CPUs of node(s) {_nodes_text(cpu_nodes)}"
    if memory != "none":
        reason += f", memory {memory} node(s) {_nodes_text(mem_nodes)}"
    return Plan(cpus=cpus, cpu_nodes=tuple(cpu_nodes), mem_nodes=mem_nodes,
                memory=memory, reason=reason, notes=tuple(notes))
