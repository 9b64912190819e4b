"""Publish a node's GPU -> NUMA layout to Ray's scheduler (Ray RFC #55097's ask).

Ray assigns GPU ids inside a node without regard to NUMA, so a multi-GPU actor can
get GPUs on two sockets. ``ray-numa resources`` prints what to pass to
``ray start --resources`` / ``--labels`` so placement groups can at least ask for
nodes that *have* N GPUs on one NUMA node; see README "Placement".
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict

from . import environment
from .gpus import discover_gpus, gpu_numa_node
from .policy import cpu_nodes_for
from .topology import machine_topology

LABEL_PREFIX = "ray-numa.io"


def node_gpu_layout() -> Dict[str, Any]:
    """GPUs per NUMA node (CPU-bearing node, so GB200 HBM nodes count for their
    Grace) as custom resources and node labels."""
    topo = machine_topology()
    gpus, _ = discover_gpus()
    known: Counter = Counter()
    for gpu in gpus:
        node = gpu_numa_node(gpu, environment.sys_root(), topo.nodes)
        if node is None or node not in topo.nodes:
            continue                      # unknown proximity: nothing to publish
        known[(cpu_nodes_for(topo, node) or (node,))[0]] += 1
    resources = {f"numa_gpus_node{n}": float(c) for n, c in sorted(known.items())}
    real = [n for n in topo.nodes.values() if n.cpus or n.mem_kb]   # not GB200's empty ones
    labels = {f"{LABEL_PREFIX}/numa-nodes": str(len(real)),
              f"{LABEL_PREFIX}/max-gpus-per-numa-node": str(max(known.values(), default=0))}
    labels.update({f"{LABEL_PREFIX}/node{n}-gpus": str(c) for n, c in sorted(known.items())})
    return {"resources": resources, "labels": labels}
