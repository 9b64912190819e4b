"""The kernel's CPU/node list format, and the limits this process starts with.

Small on purpose: a GPU worker binding with a plan the runtime-env agent prepared
(:mod:`ray_numa.prepared`) needs these and nothing of :mod:`ray_numa.topology`.
"""
from __future__ import annotations

import os
from typing import FrozenSet, Iterable, List, Optional, Tuple

from . import environment
from .options import MAX_CPU
from .sysfs import read_sysfs

#: What the cgroup cpuset and the affinity allow a process, as read: the
#: ``Cpus_allowed_list`` and ``Mems_allowed_list`` values of ``/proc/<pid>/status``
#: ("" if absent) and the affinity (None on a fixture, whose status is the machine's).
Limits = Tuple[str, str, Optional[Tuple[int, ...]]]


def parse_cpulist(text: str, what: str = "the list") -> FrozenSet[int]:
    """Parse the kernel's list format (``0-3,8,10-11``), strictly: for what a user
    typed (``--cpus``), where a mistake deserves an error that quotes it (``what``
    names where it was typed). Ids stop at :data:`ray_numa.options.MAX_CPU` before
    any range is expanded (``0-4294967295`` would fill memory). Files the kernel
    wrote go through :func:`ray_numa.sysfs.sysfs_list`, which never raises."""
    out = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if not all(x.isascii() and x.isdigit() for x in (lo, hi or lo)):
            raise ValueError(f"{what} {text!r}: {part!r} is not a CPU id or a range "
                             "first-last (the kernel's list format, e.g. 0-3,8)")
        first, last = int(lo), int(hi or lo)
        if last > MAX_CPU:
            raise ValueError(f"{what} {text!r}: {last} is past the largest CPU id "
                             f"ray-numa accepts ({MAX_CPU})")
        if last < first:
            raise ValueError(f"{what} {text!r}: the range {part!r} runs backwards "
                             f"(write {last}-{first})")
        out.update(range(first, last + 1))
    return frozenset(out)


def format_cpulist(ids: Iterable[int]) -> str:
    """Inverse of :func:`parse_cpulist`, the form numactl and the kernel accept."""
    ranges: List[Tuple[int, int]] = []
    for i in sorted(set(ids)):
        if ranges and i == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], i)
        else:
            ranges.append((i, i))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def status_field(status: str, name: str) -> str:
    """A field of ``/proc/<pid>/status``, "" if absent. String methods, not a regex:
    every GPU worker reads this at its first bind, and compiling a pattern costs
    ~0.35 M instructions, more than the search."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == name and value.split():
            return value.split()[0]
    return ""


def process_limits() -> Limits:
    """This process's :data:`Limits` right now (fixture-aware): read them before
    binding, which narrows the affinity."""
    path = environment.proc_status_path()
    status = (read_sysfs(path) if path is not None else None) or ""
    affinity = None if environment.simulated() else tuple(sorted(os.sched_getaffinity(0)))
    return (status_field(status, "Cpus_allowed_list"),
            status_field(status, "Mems_allowed_list"), affinity)
