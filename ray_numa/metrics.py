"""Per-node gauges through Ray's own metrics, so binding shows up in Prometheus/Grafana.

Recorded by the audit's probe on each node (:func:`ray_numa.audit.probe_node`), so
the values come from the node they describe and carry Ray's usual ``NodeAddress``
tag too. Ray exports custom metrics with a ``ray_`` prefix:

- ``ray_numa_gpu_workers{node, status}``: GPU workers on the node by ray-numa status
  (``bound``, ``skipped``, ``off``, ``unbound``).
- ``ray_numa_local_memory_percent{node, pid, worker}``: per GPU worker, the share of
  its resident memory on its GPU's NUMA node (only where it could be measured).

The values are those of the last audit: run ``ray-numa audit --watch SECONDS`` to keep
them current.
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Any, Dict, List, Tuple

STATUSES = ("bound", "skipped", "off", "unbound")
GPU_WORKERS = "numa_gpu_workers"
LOCAL_PERCENT = "numa_local_memory_percent"


@functools.lru_cache(maxsize=1)
def _gauges() -> Tuple[Any, Any]:
    from ray.util.metrics import Gauge
    return (Gauge(GPU_WORKERS, description="GPU workers on this node by ray-numa status",
                  tag_keys=("node", "status")),
            Gauge(LOCAL_PERCENT, description="Share (%) of a GPU worker's resident "
                  "memory on its GPU's NUMA node", tag_keys=("node", "pid", "worker")))


def record(node_id: str, rows: List[Dict[str, Any]]) -> None:
    """Set this node's gauges from the audit rows of its workers."""
    workers, local = _gauges()
    gpu_rows = [r for r in rows if r.get("gpus")]
    counts = Counter(r["binding"]["status"] for r in gpu_rows)
    for status in STATUSES:
        workers.set(counts.get(status, 0), tags={"node": node_id, "status": status})
    for r in gpu_rows:
        if r["local_pct"] is not None:
            local.set(r["local_pct"], tags={"node": node_id, "pid": str(r["pid"]),
                                            "worker": str(r["name"])})
