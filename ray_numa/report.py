"""What ``ray-numa show`` reports: the machine, its GPUs, what this process may do,
and the plan each GPU would get. Plain data, formatted by the CLI."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, Sequence

from . import environment
from .apply import probe_mempolicy
from .cuda_ids import Gpu
from .gpus import discover_gpus, gpu_numa_node, pci_numa_node_read
from .nic_env import usable_nics
from .nics import nic_order, pci_place, read_nics, unplaced
from .planning import plan_for
from .options import BindOptions
from .pcipath import choose, compute_nets, matrix
from .decision import Plan
from .topology import format_cpulist, machine_topology, process_allowed


def mempolicy_permitted(node: int) -> str:
    """May this process set a memory policy? (SGLang's ladder start.)"""
    if environment.simulated():
        return "n/a (fixture machine)"
    error = probe_mempolicy(node)
    return "yes" if error is None else f"no: {error}"


def machine_report(options: BindOptions = BindOptions()) -> Dict[str, Any]:
    topo = machine_topology()
    allowed = process_allowed(topo)
    gpus, source = discover_gpus()
    sys_root = environment.sys_root()
    report: Dict[str, Any] = {
        "fixture": str(environment.fixture_root() or ""),
        "nodes": [{"id": n.id, "cpus": format_cpulist(n.cpus), "cpu_count": len(n.cpus),
                   "mem_gib": round(n.mem_kb / 2**20, 1),
                   "distances": [n.distances.get(m, 0) for m in sorted(topo.nodes)]}
                  for n in topo.nodes.values()],
        "gpu_source": source,
        "gpus": [],
        "nics": nic_report(gpus, sys_root),
        "process": {
            "allowed_cpus": format_cpulist(allowed.cpus),
            "allowed_mems": format_cpulist(allowed.mems),
            "set_mempolicy": mempolicy_permitted(min(allowed.mems) if allowed.mems else 0),
            "numactl": shutil.which("numactl") or "",
            "kill_switch": environment.disabled(),
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER"),   # None: FASTEST_FIRST
        },
    }
    order = os.environ.get("CUDA_DEVICE_ORDER")
    for gpu in gpus:
        # plan for the GPU by its PCI (NVML) index, whatever CUDA would call it
        entry = str(gpu.index) if (order or "").upper() == "PCI_BUS_ID" else gpu.uuid or str(gpu.index)
        decision = plan_for(options, [entry], topo, allowed)
        plan = ({"cpus": format_cpulist(decision.cpus), "memory": decision.memory,
                 "mem_nodes": format_cpulist(decision.mem_nodes), "reason": decision.reason}
                if isinstance(decision, Plan) else {"skip": decision.message()})
        node = gpu_numa_node(gpu, sys_root, topo.nodes)
        report["gpus"].append({"index": gpu.index, "bus_id": gpu.bus_id, "uuid": gpu.uuid,
                               "name": gpu.name, "numa_node": node,
                               "mig": list(gpu.mig_uuids), "plan": plan})
        if node is None:    # say why: no file, -1 or garbage are different fixes
            report["gpus"][-1]["numa_node_unknown"] = pci_numa_node_read(
                gpu.bus_id, sys_root, topo.nodes)[1]
    # last: planning reads per-CPU files, which may add to what sysfs did not answer
    report["sysfs_problems"] = list(topo.problems)
    return report


def nic_report(gpus: Sequence[Gpu], sys_root: Path) -> Dict[str, Any]:
    """RDMA NICs, the GPU x NIC class matrix (``nvidia-smi topo -m``'s NIC columns)
    and the NIC(s) ``numa_bind: {"nic": "auto"}`` would give each GPU."""
    # as a worker's would: among the NICs it can open, with the job's NCCL_IB_HCA; a
    # VF it opens instead of its PF is shown beside the PF
    usable = usable_nics(sys_root)
    nics = sorted(set(read_nics(sys_root)) | set(usable), key=nic_order)
    nets = compute_nets(usable, os.environ.get("NCCL_IB_HCA", ""))
    placed = [(g.index, pci_place(sys_root, g.bus_id)) for g in gpus]
    known = [(i, p) for i, p in placed if p is not None]
    chosen = choose(known, nets)
    rows = dict(zip((i for i, _ in known), matrix(known, nics)))
    return {
        "devices": [{"name": n.name, "bus_id": n.bdf, "netdevs": list(n.netdevs),
                     "via_netdev": n.via,
                     "numa_node": n.place.numa_node if n.place else None,
                     "ports": [{"port": p.number, "state": p.state,
                                "link_layer": p.link_layer, "rate_gbps": p.rate_gbps,
                                "eligible": any(x.nic == n and x.port == p for x in nets)}
                               for p in n.ports]} for n in nics],
        "matrix": {str(g.index): rows.get(g.index) for g in gpus},
        "chosen": {str(i): {"nets": list(c.nets), "path": c.path}
                   for i, c in chosen.items()},
        "unplaced": list(unplaced(sys_root)),
    }
