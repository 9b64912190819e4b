"""Cluster-wide checks from a driver: is the plugin enabled on every node?

A node started without ``RAY_RUNTIME_ENV_PLUGINS`` silently ignores ``numa_bind``
(its agent only logs "not recognized"). :func:`check_cluster` runs a tiny probe task
pinned to each alive node and raises, naming the nodes, instead of letting actors
there run unbound unnoticed.
"""
from __future__ import annotations

import os
from typing import Dict

from . import environment


class PluginNotEnabled(RuntimeError):
    """Some nodes of the cluster do not run the ray-numa plugin."""


def _probe() -> bool:
    return bool(os.environ.get(environment.SPEC_ENV))


def plugin_status(timeout: float = 120) -> Dict[str, bool]:
    """``{node_id: plugin active}`` for every alive node of the connected cluster."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    refs = [probe.options(runtime_env={"numa_bind": "auto"},
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
            .remote() for n in nodes]
    return dict(zip(nodes, ray.get(refs, timeout=timeout)))


def check_cluster(timeout: float = 120) -> Dict[str, bool]:
    """Raise :class:`PluginNotEnabled` unless every alive node runs the plugin."""
    status = plugin_status(timeout)
    missing = [n for n, ok in status.items() if not ok]
    if missing:
        raise PluginNotEnabled(
            f"the ray-numa plugin is not enabled on node(s) {', '.join(missing)}: "
            "numa_bind is ignored there. Start Ray on those nodes after "
            "eval \"$(ray-numa env)\" (KubeRay: set the same env vars on the group).")
    return status
