"""Environment variables that steer ray-numa, read in one place.

Everything that changes behaviour without code changes is named here so the README,
the plugin (which forwards them to workers) and the tests agree on one spelling.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional

#: Points discovery at a fixture tree instead of this machine. The tree may hold
#: ``sys/`` (sysfs: NUMA nodes, CPUs, PCI devices), ``proc/self/status`` (allowed CPUs
#: and mems of a cgroup-limited process) and ``nvml.json`` (a fake NVML's devices).
#: Each part present replaces that part of the machine; with ``sys/`` present the
#: plan is recorded instead of applied, because it describes another machine.
FIXTURE_ENV = "RAY_NUMA_FIXTURE"
#: Kill switch: any of 1/true/yes/on disables all binding, cluster-wide when set on
#: every ``ray start``; the actors start unbound and ``current_binding()`` says why.
DISABLE_ENV = "RAY_NUMA_DISABLE"
#: Logging level of the ``ray_numa`` logger: a level name (DEBUG, INFO, WARNING, ERROR,
#: CRITICAL, any case) or a number (10, 20...); anything else warns once and means INFO.
LOG_LEVEL_ENV = "RAY_NUMA_LOG_LEVEL"
#: Set by the plugin for "auto" workers: the node's GPU table (JSON) that the
#: runtime-env agent resolved once, so the worker needs no NVML (ray_numa/gpu_table.py).
GPU_TABLE_ENV = "RAY_NUMA_GPU_TABLE"
#: Set by the plugin for "auto" workers: the agent's plan for each GPU id of the node
#: (JSON), so a worker assigned one GPU binds without planning (ray_numa/prepared.py).
PLANS_ENV = "RAY_NUMA_PLANS"
#: Tests and benchmarks: a file the fake NVML appends ``<pid>`` to on every
#: ``nvmlInit``, to count NVML initializations per process.
FAKE_NVML_LOG_ENV = "RAY_NUMA_FAKE_NVML_LOG"
#: Set by the plugin for the worker: the normalized ``numa_bind`` options (JSON).
SPEC_ENV = "RAY_NUMA_SPEC"
#: Set by the plugin for the worker: the numactl argv it prefixed (or, on a fixture,
#: would have prefixed), JSON list; empty when the worker must bind in-process.
PREFIX_ENV = "RAY_NUMA_NUMACTL_ARGV"
#: Set by the worker bootstrap when ray_numa could not set the worker up (why, in
#: words); ``current_binding()`` reports it. The bootstrap spells it too (stdlib only).
BOOT_ERROR_ENV = "RAY_NUMA_BOOT_ERROR"

_TRUE = {"1", "true", "yes", "on"}

#: The Ray releases ray-numa is tested with, the two ends CI runs (``.ci/run``: the
#: oldest in its second pass, the newest on the package index in the main one). The
#: oldest is pyproject's lower bound; there is no upper bound, so a newer Ray is kept
#: and told it is untested (:func:`untested_ray`) rather than downgraded.
OLDEST_RAY = (2, 48)
NEWEST_TESTED_RAY = (2, 60)
SUPPORTED_RAY = (f"{OLDEST_RAY[0]}.{OLDEST_RAY[1]} to "
                 f"{NEWEST_TESTED_RAY[0]}.{NEWEST_TESTED_RAY[1]}")


def ray_version() -> str:
    try:
        from ray._version import version
    except Exception:
        return "(unknown version)"
    return str(version)


def ray_hook_missing(hook: str, effect: str) -> str:
    """The message for a private Ray hook this Ray lacks: which hook, which Ray,
    what the user loses, and which Ray versions ray-numa is tested with."""
    return (f"Ray {ray_version()} has no {hook}, which ray-numa uses {effect}; "
            f"ray-numa is tested with Ray {SUPPORTED_RAY}")


def untested_ray(version: str) -> Optional[str]:
    """The note for a Ray newer than :data:`NEWEST_TESTED_RAY` (e.g. ``2.61.0``,
    ``3.0.0.dev0``), None for a tested one or a version that does not parse."""
    parts = version.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        return None
    if major_minor <= NEWEST_TESTED_RAY:
        return None
    return (f"Ray {version} is newer than the Ray releases ray-numa is tested with "
            f"({SUPPORTED_RAY}); it binds wherever Ray's hooks still exist and names "
            f"any that is missing")


def warn_if_untested_ray() -> None:
    """Once per process, on the driver (``register``), ``ray-numa env`` and the
    runtime-env agent: never in the worker, whose start is a hot path."""
    note = untested_ray(ray_version())
    if note is not None:
        warn_once(note)


def disabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """The kill switch, from ``environ`` (e.g. a runtime_env's env_vars) or ours."""
    value = (environ or {}).get(DISABLE_ENV) or os.environ.get(DISABLE_ENV, "")
    return value.strip().lower() in _TRUE


def fixture_name() -> str:
    """:data:`FIXTURE_ENV` as set ("" on a real machine): part of what the agent hands
    a worker is valid for (gpu_table.py, prepared.py)."""
    return os.environ.get(FIXTURE_ENV, "").strip()


def fixture_root() -> Optional[Path]:
    value = fixture_name()
    return Path(value) if value else None


def fixture_file(relative: str) -> Optional[Path]:
    """The fixture's copy of ``relative`` if the fixture has one, else None."""
    root = fixture_root()
    if root is None:
        return None
    path = root / relative
    return path if path.exists() else None


def sys_root() -> Path:
    """Directory that plays ``/sys``: the fixture's ``sys/`` or the real one."""
    return fixture_file("sys") or Path("/sys")


def simulated() -> bool:
    """True when topology comes from a fixture: plans are recorded, not applied."""
    return fixture_file("sys") is not None


def proc_status_path() -> Optional[Path]:
    """``/proc/self/status`` to read allowed CPUs/mems from; None on a fixture
    machine without one (then every CPU and node of the fixture is allowed)."""
    found = fixture_file("proc/self/status")
    if found is not None or simulated():
        return found
    return Path("/proc/self/status")


_held: Optional[List[logging.LogRecord]] = None   # see hold_log


class _Handler(logging.StreamHandler):
    """stderr, or the held records while :func:`hold_log` is in effect."""

    def emit(self, record: logging.LogRecord) -> None:
        if _held is not None:
            _held.append(record)
        else:
            super().emit(record)


def log_level(value: str) -> Optional[int]:
    """The level ``value`` names (a level name in any case, or a number), else None.

    Not ``getattr(logging, name)``: ``logging`` has attributes that are no level
    (``BASIC_FORMAT``), and ``Logger.setLevel`` raises for them, in every worker.
    """
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        level = logging.getLevelName(text.upper())   # a registered name's number
        return level if isinstance(level, int) else None


def logger() -> logging.Logger:
    """The package logger, with a stderr handler so worker logs carry our lines."""
    log = logging.getLogger("ray_numa")
    if not getattr(log, "_ray_numa_configured", False):
        value = os.environ.get(LOG_LEVEL_ENV) or "INFO"
        level = log_level(value)
        log.setLevel(logging.INFO if level is None else level)
        if not log.handlers:
            handler = _Handler()
            handler.setFormatter(logging.Formatter("[ray_numa] %(levelname)s %(message)s"))
            log.addHandler(handler)
            log.propagate = False
        log._ray_numa_configured = True  # type: ignore[attr-defined]
        if level is None:
            warn_once(f"{LOG_LEVEL_ENV}={value!r} is not a logging level (DEBUG, INFO, "
                      "WARNING, ERROR, CRITICAL, or a number such as 10): using INFO")
    return log


def hold_log() -> None:
    """Hold log lines back until :func:`release_log`.

    A Ray worker's stderr is the raylet's (``raylet.err``, shown on the driver as
    ``(raylet)``) until Ray connects the worker and points it at ``worker-*.err``;
    lines written before then would land in the wrong log.
    """
    global _held
    if _held is None:
        _held = []


def release_log() -> None:
    """Write the held lines to the current stderr, and every later line directly."""
    global _held
    held, _held = _held or [], None
    for handler in logger().handlers:
        if isinstance(handler, _Handler):
            handler.setStream(sys.stderr)
            for record in held:
                handler.emit(record)


_warned: set = set()

#: Why the worker hook left this process alone without loading the binding code
#: (a CPU-only task or actor under "auto"); :func:`ray_numa.current_binding` says it.
untouched_reason: Optional[str] = None


def warn_once(message: str) -> None:
    """Warn about an impossible binding once per process, not once per task."""
    if message not in _warned:
        _warned.add(message)
        logger().warning(message)
