"""The node's GPU table, resolved once by the runtime-env agent and handed to workers.

Enumerating GPUs means ``nvmlInit`` plus a dozen NVML calls per GPU; done in every
worker it is the slowest part of binding, repeated on every start although the answer
is the same for the whole node. The runtime-env agent runs the plugin's ``create``
for every runtime_env on its node anyway, so it resolves the table there (off its
event loop, and once per agent process: :func:`ray_numa.gpus.discover_gpus` caches)
and ``modify_context`` passes it to the worker in :data:`~ray_numa.environment.GPU_TABLE_ENV`,
where :func:`node_gpus` returns it instead of asking NVML.

A worker uses the table only when it describes the worker's own view of the node:
the same fixture (a runtime_env may point a worker at another one) and every
``CUDA_VISIBLE_DEVICES`` entry still names a GPU in it (a MIG layout changed since
the agent read it). Otherwise, or if the table is unreadable, it asks NVML itself.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional, Tuple

from . import environment
from .cuda_ids import Gpu, GpuResolutionError, resolve_visible
from .gpus import discover_gpus
from .shapes import NONE, problem, shape

VERSION = 1
VIA_AGENT = " (resolved once per node by the runtime-env agent)"

Table = Tuple[Tuple[Gpu, ...], str]


def encode(gpus: Tuple[Gpu, ...], source: str) -> str:
    """The table as the JSON the worker gets; every ``Gpu`` field goes along."""
    return json.dumps({"version": VERSION, "fixture": environment.fixture_name(), "source": source,
                       "gpus": [g._asdict() for g in gpus]},
                      separators=(",", ":"))


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples a ``Gpu`` holds."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


#: Each ``Gpu`` field as :func:`encode` writes it.
_FIELDS = {"index": shape(int), "bus_id": shape(str), "uuid": shape(str), "name": shape(str),
           "compute_capability": shape(list, int, 2), "nvml_numa_node": shape((int, NONE)),
           "mig_uuids": shape(list, str)}


def _gpu(raw: Any) -> Gpu:
    why = problem(raw, _FIELDS)
    if why:
        raise TypeError(f"a GPU of the table: {why}")
    return Gpu(**{k: _tuples(raw[k]) for k in _FIELDS})


@functools.lru_cache(maxsize=4)
def decode(text: str) -> Optional[Tuple[Tuple[Gpu, ...], str, str]]:
    """``(gpus, source, fixture)`` from :func:`encode`'s output; None if it is not
    a table this version can read."""
    try:
        data = json.loads(text)
        if data.get("version") != VERSION:
            return None
        gpus = tuple(_gpu(g) for g in data["gpus"])
        return gpus, data["source"] + VIA_AGENT, data.get("fixture", "")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def for_agent() -> str:
    """Resolve this node's table (NVML, else sysfs) and encode it: the agent side."""
    return encode(*discover_gpus())


def node_gpus() -> Table:
    """This process's GPUs and their source: in a Ray worker the table the agent
    resolved for the node, so NVML is initialized once per node rather than once per
    worker; elsewhere :func:`~ray_numa.gpus.discover_gpus`."""
    return handed_over() or discover_gpus()


def handed_over() -> Optional[Table]:
    """The agent's table if it describes this process's node, else None (ask NVML).

    Cheap enough to call per plan: decoding is cached, the checks are string work.
    """
    text = os.environ.get(environment.GPU_TABLE_ENV)
    decoded = decode(text) if text else None
    if decoded is None:
        return None
    gpus, source, fixture = decoded
    if fixture != environment.fixture_name():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") or ""
    if not all(_names(e, gpus) for e in visible.split(",") if e.strip()):
        return None
    return gpus, source


def _names(entry: str, gpus: Tuple[Gpu, ...]) -> bool:
    """Whether ``entry`` names a GPU of ``gpus`` (alone, it cannot be cut off)."""
    try:
        return bool(resolve_visible([entry], gpus, os.environ.get("CUDA_DEVICE_ORDER")))
    except GpuResolutionError:
        return False
