"""Each Ray worker's binding, published as a small file so `ray-numa audit` can read it.

What ray-numa decided lives in the worker's memory; the audit runs in another
process (a probe task on the same node). So every worker that the plugin started
writes its :class:`~ray_numa.binding.Binding` to ``<tmp>/ray-numa-bindings-<uid>/<pid>.json``
whenever it changes. Pids are reused, so each record carries the process start time
(``/proc/<pid>/stat`` field 22) and a record whose start time no longer matches
belongs to a dead process and is ignored (and pruned). Only processes that the plugin
started (``RAY_NUMA_SPEC`` set) publish; publishing never fails a worker.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from . import environment


def ledger_dir() -> Path:
    """Where this node's workers publish: per user (Ray runs a node's workers as the
    raylet's user, and nobody else may write there), shared by every Ray session."""
    return Path(tempfile.gettempdir()) / f"ray-numa-bindings-{os.getuid()}"


def start_time(pid: Union[int, str] = "self") -> Optional[str]:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and ')': split after the last ')'
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def publish(binding: Any) -> None:
    """Write this process's binding (atomically) if the plugin started it."""
    if not os.environ.get(environment.SPEC_ENV):
        return
    record = {"pid": os.getpid(), "start_time": start_time(), "binding": binding.as_dict()}
    try:
        folder = ledger_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, default=str))
        os.replace(tmp, folder / f"{os.getpid()}.json")
    except OSError as exc:     # a read-only /tmp costs the audit, not the worker
        environment.logger().debug("cannot publish binding for audit: %s", exc)


def read(pid: int) -> Optional[Dict[str, Any]]:
    """The binding ``pid`` published (as a dict), or None: never bound, or gone."""
    path = ledger_dir() / f"{pid}.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("start_time") != start_time(pid):
        return None            # an earlier process with the same pid
    return record["binding"]


def prune() -> None:
    """Remove records of processes that have exited."""
    for path in ledger_dir().glob("*.json"):
        try:
            record = json.loads(path.read_text())
            if record.get("start_time") != start_time(path.stem):
                path.unlink()
        except (OSError, ValueError):
            continue
