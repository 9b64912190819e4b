"""Plans the runtime-env agent prepares once per node, so a GPU worker binds without planning.

The agent runs the plugin's ``create`` for every runtime_env, and for "auto" already
resolves the node's GPU table there (:mod:`ray_numa.gpu_table`). It also plans each
GPU id Ray may assign on the node, with the same :func:`ray_numa.planning.plan_for` a
worker would run, and ``modify_context`` hands the plans over in
:data:`~ray_numa.environment.PLANS_ENV`. A worker assigned one GPU takes its plan from
there: no topology read, no GPU id resolved, nothing planned, and the modules that do
that never imported (~7 M instructions per GPU worker).

A plan holds only for a process that would have planned the same: the same options,
fixture and ``CUDA_DEVICE_ORDER``, and the same cpuset and affinity at start
(:data:`~ray_numa.cpusets.Limits`; the agent and the workers are all the raylet's
children). Where any differs, for several GPUs, or for a device the worker follows
later, the worker plans itself.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from . import environment
from .cpusets import Limits, format_cpulist, parse_cpulist, process_limits
from .options import MEMORY_POLICIES
from .decision import Plan, Skip
from .shapes import NONE, problem, shape

VERSION = 1


def _key(options_json: str, limits: Limits) -> list:
    """Everything besides the machine that a plan depends on."""
    return [VERSION, options_json, environment.fixture_name(),
            os.environ.get("CUDA_DEVICE_ORDER"), list(limits[:2]),
            None if limits[2] is None else list(limits[2])]


def _encode(decision: Any) -> Dict[str, Any]:
    if isinstance(decision, Skip):
        return {"skip": decision._asdict()}
    return {"plan": dict(decision._asdict(), cpus=format_cpulist(decision.cpus))}


#: Plan and Skip fields as :func:`_encode` writes them.
_PLAN = {"cpus": shape(str), "cpu_nodes": shape(list, int), "mem_nodes": shape(list, int),
         "memory": shape(str), "reason": shape(str), "notes": shape(list, str),
         "home": shape((int, NONE))}
_SKIP = {"reason": shape(str), "fix": shape(str), "quiet": shape(bool)}


def _decode(entry: Any) -> Any:
    """The Plan or Skip in ``entry``; TypeError or ValueError if it is not one
    :func:`_encode` wrote."""
    if type(entry) is not dict:
        raise TypeError("not a JSON object")
    kind, fields = ("skip", _SKIP) if "skip" in entry else ("plan", _PLAN)
    raw = entry.get(kind)
    why = problem(raw, fields) or ("" if kind == "skip" or raw["memory"] in MEMORY_POLICIES
                                   else f"memory {raw['memory']!r} is no policy")
    if why:
        raise TypeError(f"the agent's {kind}: {why}")
    if kind == "skip":
        return Skip(**{k: raw[k] for k in fields})
    return Plan(**dict({k: raw[k] for k in fields}, cpus=parse_cpulist(raw["cpus"]),
                       cpu_nodes=tuple(raw["cpu_nodes"]), mem_nodes=tuple(raw["mem_nodes"]),
                       notes=tuple(raw["notes"])))


def for_agent(options: Any) -> str:
    """Plan every GPU id Ray may assign on this node (its ``CUDA_VISIBLE_DEVICES``
    entries, else every GPU's index), for ``options`` in this process (the agent)."""
    from .cuda_ids import parse_visible
    from .gpus import discover_gpus
    from .planning import plan_for
    from .topology import machine_topology, process_allowed

    limits = process_limits()
    topology = machine_topology()
    allowed = process_allowed(topology, limits)
    gpus, _ = discover_gpus()
    ids = parse_visible(os.environ.get("CUDA_VISIBLE_DEVICES")) or [str(g.index) for g in gpus]
    plans = {i: _encode(plan_for(options, [i], topology, allowed)) for i in ids}
    return json.dumps({"key": _key(options.to_json(), limits), "nodes": sorted(topology.nodes),
                       "plans": plans}, separators=(",", ":"))


@functools.lru_cache(maxsize=4)
def _read(text: str) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(text)
        return data if isinstance(data, dict) and isinstance(data.get("plans"), dict) else None
    except ValueError:
        return None


def lookup(options: Any, gpu_ids: Sequence[str],
           limits: Limits) -> Optional[Tuple[Any, Tuple[int, ...]]]:
    """The agent's decision (Plan or Skip) for one GPU id, and the machine's node ids;
    None when this process must plan itself (see the module doc)."""
    text = os.environ.get(environment.PLANS_ENV)
    data = _read(text) if text and len(gpu_ids) == 1 else None
    if data is None or data.get("key") != _key(options.to_json(), limits):
        return None
    entry = data["plans"].get(str(gpu_ids[0]))
    nodes = data.get("nodes")
    if entry is None or type(nodes) is not list or not all(type(n) is int for n in nodes):
        return None
    try:
        return _decode(entry), tuple(nodes)
    except (TypeError, ValueError):     # written by another version: plan here
        return None
