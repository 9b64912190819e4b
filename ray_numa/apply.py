"""The one place that changes the process: CPU affinity and memory policy.

Two ways in. Before the worker starts, a ``numactl`` argv (policy set before the
interpreter exists, so every thread inherits it). After start, syscalls: affinity on
every thread in the process, the memory policy of the calling thread (the one that
runs the actor/task and spawns its threads), and ``migrate_pages`` for pages touched
before the bind. Other pre-existing threads keep the default "local" policy, which,
with their affinity on the target node, allocates there too.

Permission problems walk a ladder like SGLang's: bind -> preferred -> CPUs only.
On a fixture machine a :class:`RecordingBackend` stands in and records every call.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
from typing import Any, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from . import syscalls
from .policy import Plan
from .topology import format_cpulist

SYS_NICE_FIX = ("the kernel refused set_mempolicy (EPERM): in a container add the "
                "SYS_NICE capability (docker run --cap-add SYS_NICE; Kubernetes "
                "securityContext.capabilities.add: [\"SYS_NICE\"])")
_PERMISSION = (errno.EPERM, errno.EACCES, errno.ENOSYS)


class BindError(RuntimeError):
    """Binding was required (strict) but could not be done."""


class SyscallBackend:
    """Applies to this process through the kernel."""
    name = "syscall"

    def set_affinity(self, cpus: FrozenSet[int]) -> int:
        """Pin every thread, re-listing until no new thread appeared meanwhile."""
        done: set = set()
        for _ in range(10):
            new = set(syscalls.thread_ids()) - done
            if not new:
                break
            for tid in new:
                try:
                    os.sched_setaffinity(tid, cpus)
                except ProcessLookupError:
                    pass  # the thread exited meanwhile
            done |= new
        return len(done)

    def set_mempolicy(self, mode: str, nodes: Sequence[int]) -> None:
        syscalls.set_mempolicy(mode, nodes)

    def migrate(self, old: Sequence[int], new: Sequence[int]) -> int:
        return syscalls.migrate_pages(old, new)


class RecordingBackend:
    """Stands in on fixture machines, whose CPUs and nodes this kernel lacks."""
    name = "record"

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def set_affinity(self, cpus: FrozenSet[int]) -> int:
        self.calls.append(("sched_setaffinity", "all-threads", format_cpulist(cpus)))
        return len(syscalls.thread_ids())

    def set_mempolicy(self, mode: str, nodes: Sequence[int]) -> None:
        self.calls.append(("set_mempolicy", mode, format_cpulist(nodes)))

    def migrate(self, old: Sequence[int], new: Sequence[int]) -> int:
        self.calls.append(("migrate_pages", format_cpulist(old), format_cpulist(new)))
        return 0


@dataclasses.dataclass(frozen=True)
class Applied:
    memory: str                     # the policy that took effect
    threads: int
    notes: Tuple[str, ...]
    migrated: bool = False


def _ladder(memory: str) -> Tuple[str, ...]:
    return {"bind": ("bind", "preferred"), "preferred": ("preferred",),
            "interleave": ("interleave", "preferred"), "local": ("local",)}.get(memory, ())


def apply_plan(plan: Plan, backend: Any, migrate: bool,
               all_nodes: Iterable[int]) -> Applied:
    """Apply ``plan`` in-process; raises OSError only if CPU affinity itself fails."""
    threads = backend.set_affinity(plan.cpus)
    notes: List[str] = []
    memory = "none"
    for mode in _ladder(plan.memory):
        nodes = {"preferred": plan.mem_nodes[:1], "local": ()}.get(mode, plan.mem_nodes)
        try:
            backend.set_mempolicy(mode, nodes)
            memory = mode
            break
        except OSError as exc:
            if exc.errno not in _PERMISSION:
                raise
            notes.append(f"{exc}")
    if plan.memory != "none" and memory != plan.memory:
        notes.append(SYS_NICE_FIX + f"; memory policy is '{memory}' instead of "
                     f"'{plan.memory}'")
    migrated = False
    if migrate and memory in ("bind", "preferred", "local"):
        others = sorted(set(all_nodes) - set(plan.mem_nodes))
        if others:
            try:
                backend.migrate(others, plan.mem_nodes[:1] if memory == "preferred"
                                else plan.mem_nodes)
                migrated = True
            except OSError as exc:
                notes.append(f"pages touched before binding stay where they are: {exc}")
    return Applied(memory=memory, threads=threads, notes=tuple(notes), migrated=migrated)


def reset(backend: Any, cpus: FrozenSet[int]) -> None:
    """Undo a binding: back to ``cpus`` (the original affinity) and default policy."""
    backend.set_affinity(cpus)
    try:
        backend.set_mempolicy("default", ())
    except OSError:
        pass


def numactl_argv(plan: Plan, memory: Optional[str] = None) -> List[str]:
    """``numactl`` options for ``plan`` (exact CPUs, so cpuset limits are kept)."""
    memory = plan.memory if memory is None else memory
    nodes = format_cpulist(plan.mem_nodes)
    mem = {"bind": [f"--membind={nodes}"],
           "preferred": [f"--preferred={plan.mem_nodes[0]}"] if plan.mem_nodes else [],
           "interleave": [f"--interleave={nodes}"]}.get(memory, [])
    return ["numactl", f"--physcpubind={format_cpulist(plan.cpus)}", *mem]


def probe_numactl(plan: Plan) -> Tuple[Optional[List[str]], str, Tuple[str, ...]]:
    """The strongest numactl argv this machine permits, by running it on ``true``.

    Returns (argv or None when numactl is unusable, memory policy, notes).
    """
    exe = shutil.which("numactl")
    if exe is None:
        return None, "none", ("numactl is not installed (apt-get install numactl); "
                              "binding in-process instead",)
    notes: List[str] = []
    for memory in _ladder(plan.memory) + ("none",):
        argv = numactl_argv(plan, memory)
        proc = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            if plan.memory != "none" and memory != plan.memory:
                notes.append(SYS_NICE_FIX + f"; memory policy is '{memory}' instead "
                             f"of '{plan.memory}'")
            return argv, memory, tuple(notes)
        notes.append(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return None, "none", tuple(notes)
