"""The plan for a process on this machine: which GPUs it means, then :func:`policy.decide`.

Below both :mod:`ray_numa.binding` (a process plans itself) and
:mod:`ray_numa.prepared` (the runtime-env agent plans every GPU of its node ahead of
the workers), which must plan alike. The topology and GPU modules load on first
use: a worker binding with the agent's plan never plans, and never imports them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from . import environment
from .policy import NO_GPU, SPLIT_MODES, Skip, Target, decide

if TYPE_CHECKING:
    from .cuda_ids import Gpu
    from .options import BindOptions
    from .topology import Allowed, Topology


def _no_gpu(gpu_ids: Sequence[str], source: str) -> str:
    """Why GPU ids Ray or the launcher gave name nothing to bind near."""
    from .gpus import other_vendor_gpus
    assigned = f"GPU(s) {', '.join(gpu_ids)} were assigned but this machine shows no NVIDIA GPU"
    others = other_vendor_gpus(environment.sys_root())
    if others:
        return (f"{assigned} (from {source}); ray-numa binds NVIDIA GPUs only, and this "
                f"machine's GPUs are {', '.join(others)}")
    return f"{assigned} (from {source}); with fake num_gpus there is nothing to bind to"


def _targets(gpu_ids: Sequence[str], topo: Topology,
             options: BindOptions) -> Tuple[List[Target], List[Optional[int]]]:
    """The assigned GPUs as targets, and the node of every GPU of the machine (PCI
    order) where the CPU mode splits a node among its GPUs (see
    :func:`ray_numa.gpus.machine_gpus`); other modes read only the assigned GPUs'."""
    from .cuda_ids import GpuResolutionError, resolve_visible
    from .gpu_table import node_gpus
    from .gpus import gpu_numa_node, machine_gpus
    gpus, source = node_gpus()
    if not gpus:
        raise GpuResolutionError(_no_gpu(gpu_ids, source))
    chosen = resolve_visible(gpu_ids, gpus, os.environ.get("CUDA_DEVICE_ORDER"))

    def node_of(gpu: Gpu) -> Optional[int]:
        return gpu_numa_node(gpu, environment.sys_root(), topo.nodes)

    if options.cpus not in SPLIT_MODES:
        return [Target(label=f"GPU {g.index} ({g.bus_id})", peer=g.index, bus=g.bus_id,
                       node=node_of(g))
                for g in chosen], []
    machine = machine_gpus(gpus, environment.sys_root())
    peers = [node_of(g) for g in machine]
    place = {g.bus_id: i for i, g in enumerate(machine)}
    return [Target(label=f"GPU {g.index} ({g.bus_id})", peer=place[g.bus_id], bus=g.bus_id,
                   node=peers[place[g.bus_id]]) for g in chosen], peers


def plan_for(options: BindOptions, gpu_ids: Sequence[str] = (),
             topology: Optional[Topology] = None,
             allowed: Optional[Allowed] = None) -> Any:
    """The :class:`Plan` or :class:`Skip` for ``options`` on this machine."""
    from .cuda_ids import GpuResolutionError
    from .topology import machine_topology, process_allowed
    topo = topology or machine_topology()
    allowed = allowed or process_allowed(topo)
    if options.auto:
        if not gpu_ids:
            return Skip(NO_GPU, quiet=True)
        try:
            targets, peers = _targets(gpu_ids, topo, options)
        except GpuResolutionError as exc:
            return Skip(str(exc))
    else:
        targets = [Target(label=f"node {n}", node=n) for n in options.node]
        peers = []
    return decide(topo, allowed, options, targets, peers)
