"""The one place that changes the process: CPU affinity and memory policy.

Two ways in. Before the worker starts, a ``numactl`` argv (policy set before the
interpreter exists, so every thread inherits it). After start, syscalls: affinity on
every thread in the process, the memory policy of the calling thread (the one that
runs the actor/task and spawns its threads), and ``mbind(MPOL_MF_MOVE)`` over the
process's own private mappings for pages touched before the bind (see mappings.py).

A memory policy is per thread (set_mempolicy(2)) and no syscall sets another
thread's. The backend remembers the policy the process should have and which
threads have it; a thread that runs a later task takes it there (:func:`catch_up`).
Threads that never do keep theirs: with their affinity on the target node, the
default "local" policy allocates there too.

Permission problems walk a ladder like SGLang's: bind -> preferred -> CPUs only.
On a fixture machine a :class:`RecordingBackend` stands in and records every call.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections import namedtuple
from typing import (TYPE_CHECKING, Any, Dict, FrozenSet, Iterable, List, Optional, Sequence,
                    Tuple)

from . import mappings, syscalls
from .cpusets import format_cpulist

if TYPE_CHECKING:
    from .decision import Plan

SYS_NICE_FIX = ("the kernel refused set_mempolicy (EPERM): in a container add the "
                "SYS_NICE capability (docker run --cap-add SYS_NICE; Kubernetes "
                "securityContext.capabilities.add: [\"SYS_NICE\"])")
NO_MEMPOLICY = ("set_mempolicy is not available here (ENOSYS: a kernel without NUMA, "
                "a sandbox that hides it, or an architecture ray-numa has no syscall "
                "numbers for)")
_PERMISSION = (errno.EPERM, errno.EACCES, errno.ENOSYS)


class BindError(RuntimeError):
    """Binding was required (strict) but could not be done."""


PolicyKey = Tuple[str, Tuple[int, ...]]      # (kernel mode, nodes)


class ThreadPolicies:
    """The memory policy the process should have (``wanted``), and the one ray-numa
    set on each thread it ran on (``by_thread``: native thread id -> policy)."""

    def __init__(self) -> None:
        self.wanted: Optional[PolicyKey] = None
        self.by_thread: Dict[int, PolicyKey] = {}
        self._local = threading.local()      # this thread's, checked at every task start

    def took(self, key: PolicyKey) -> None:
        """The calling thread now has ``key``, and so should every thread."""
        if self.wanted is None:   # the first: main has what the process started with
            self.by_thread.setdefault(threading.main_thread().native_id, ("as started", ()))
        self.wanted = key
        self._local.policy = key
        self.by_thread[threading.get_native_id()] = key

    def had(self, key: PolicyKey) -> None:
        """The calling thread now has ``key`` (a catch-up: ``wanted`` may have moved on
        meanwhile, and then this thread catches up again at its next task)."""
        self._local.policy = key
        self.by_thread[threading.get_native_id()] = key

    def tried(self) -> None:
        self._local.policy = self.wanted

    def current(self) -> bool:
        return getattr(self._local, "policy", None) == self.wanted

    def lagging(self) -> Dict[int, PolicyKey]:
        """Threads ray-numa set another policy on than the wanted one."""
        return {tid: key for tid, key in self.by_thread.items() if key != self.wanted}


class SyscallBackend:
    """Applies to this process through the kernel."""
    name = "syscall"

    def __init__(self) -> None:
        self.threads = ThreadPolicies()

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

    def migrate(self, old: Sequence[int], new: Sequence[int]) -> Tuple[int, Tuple[str, ...]]:
        """Move this process's own pages onto ``new`` (``old`` is what the recording
        backend shows); returns how many mapping ranges were passed to the kernel and
        why some pages stayed (one line each).

        Not ``migrate_pages(2)``: with CAP_SYS_NICE it also moves pages other processes
        map (Ray's object store, /dev/shm). ``mbind(2)`` with ``MPOL_MF_MOVE`` over
        its own private mappings (mappings.py) moves only pages this process alone
        maps; it also sets the mappings' policy, which is then removed again (MPOL_DEFAULT): a
        mapping policy would outlive a later rebind or unbind and override the
        thread's, and migrate_pages set none either.
        """
        mine = mappings.read_own_mappings(keep=_no_policy_of_its_own)
        ranges = mappings.merge(mine)
        failed: List[str] = []
        for start, end in ranges:
            err = _move(start, end, new)
            if err is not None and err.errno == errno.EFAULT:
                # a hole since maps was read (a thread exited, a munmap): one EFAULT
                # fails the whole call, so what is mapped there now, piece by piece
                chosen = [m for m in mine if start <= m[0] < end]
                for piece in mappings.overlaps(mappings.read_own_mappings(), chosen):
                    err = _move(*piece, new)
                    if err is not None and err.errno != errno.EFAULT:
                        failed.append(f"{err}")
            elif err is not None:       # ENOMEM included: the kernel could not move them
                failed.append(f"{err}")
        return len(ranges), tuple(failed)


def _move(start: int, end: int, nodes: Sequence[int]) -> Optional[OSError]:
    """mbind MPOL_BIND with MPOL_MF_MOVE, then the policy removed again; the error if
    either failed (the mapping policy is removed even when the move failed)."""
    err = None
    try:
        syscalls.mbind(start, end - start, "bind", nodes, syscalls.MPOL_MF_MOVE)
    except OSError as exc:
        err = exc
    try:
        syscalls.mbind(start, end - start, "default")
    except OSError as exc:
        err = err or exc
    return err


def _no_policy_of_its_own(start: int) -> bool:
    """A mapping with its own policy (a user's mbind, libnuma's numa_alloc_onnode) is
    left where its owner put it; one gone since maps was read is left too."""
    try:
        return syscalls.vma_policy(start) == "default"
    except OSError:
        return False


class RecordingBackend:
    """Stands in on fixture machines, whose CPUs and nodes this kernel lacks."""
    name = "record"

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []
        self.threads = ThreadPolicies()

    def set_affinity(self, cpus: FrozenSet[int]) -> int:
        self.calls.append(("sched_setaffinity", "all-threads", format_cpulist(cpus)))
        return len(syscalls.thread_ids())

    def set_mempolicy(self, mode: str, nodes: Sequence[int]) -> None:
        self.calls.append(("set_mempolicy", mode, format_cpulist(nodes)))

    def migrate(self, old: Sequence[int], new: Sequence[int]) -> Tuple[int, Tuple[str, ...]]:
        """Recorded as the move it stands for: the process's own pages (mbind with
        MPOL_MF_MOVE over its own mappings) from ``old`` onto ``new``."""
        self.calls.append(("mbind_move", format_cpulist(old), format_cpulist(new)))
        return 0, ()


class Applied(namedtuple("Applied", "memory threads notes migrated mem_nodes",
                         defaults=(False, ()))):
    __slots__ = ()
    memory: str                     # the policy that took effect
    threads: int
    notes: Tuple[str, ...]
    migrated: bool                  # default False
    mem_nodes: Tuple[int, ...]      # the nodes that policy names (after any fallback); ()


def _ladder(memory: str) -> Tuple[str, ...]:
    return {"bind": ("bind", "preferred"), "preferred": ("preferred",),
            "interleave": ("interleave", "preferred"), "local": ("local",)}.get(memory, ())


def _home(plan: Plan) -> Tuple[int, ...]:
    if plan.home is not None:
        return (plan.home,)
    return plan.mem_nodes[:1]


def _attempts(plan: Plan, memory: str) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """(kernel mode, nodes) for one rung: "preferred" over several nodes is
    MPOL_PREFERRED_MANY (kernel 5.15+), then MPOL_PREFERRED on the GPU's own node."""
    if memory == "local":
        return (("local", ()),)
    if memory != "preferred":
        return ((memory, plan.mem_nodes),)
    if len(plan.mem_nodes) > 1:
        return (("preferred_many", plan.mem_nodes), ("preferred", _home(plan)))
    return (("preferred", _home(plan)),)


def _steps(plan: Plan) -> List[Tuple[str, str, Tuple[int, ...]]]:
    """Every (policy, kernel mode, nodes) to try, strongest first."""
    return [(rung, mode, nodes) for rung in _ladder(plan.memory)
            for mode, nodes in _attempts(plan, rung)]


def apply_plan(plan: Plan, backend: Any, migrate: bool,
               all_nodes: Iterable[int]) -> Applied:
    """Apply ``plan`` in-process; raises OSError only if CPU affinity itself fails.

    Once affinity is set it stays set: a memory-policy error after it is reported in
    the notes (memory "none"), so the record matches what the process really has.
    """
    threads = backend.set_affinity(plan.cpus)
    notes: List[str] = []
    memory, nodes, refused = "none", (), set()
    for rung, mode, wanted in _steps(plan):
        try:
            backend.set_mempolicy(mode, wanted)
            backend.threads.took((mode, tuple(wanted)))
            # "local" names no nodes: memory lands where the CPUs are, the plan's nodes
            memory, nodes = rung, tuple(wanted) if mode != "local" else plan.mem_nodes
            break
        except OSError as exc:
            if mode == "preferred_many" and exc.errno == errno.EINVAL:
                continue            # kernel before 5.15: prefer the GPU's own node
            if exc.errno not in _PERMISSION:
                notes.append(f"{exc}; memory policy unchanged, CPUs stay pinned to "
                             f"{format_cpulist(plan.cpus)}")
                break
            refused.add(exc.errno)
            notes.append(f"{exc}")
    if refused and memory != plan.memory:
        notes.append((NO_MEMPOLICY if refused == {errno.ENOSYS} else SYS_NICE_FIX)
                     + f"; memory policy is '{memory}' instead of '{plan.memory}'")
    migrated, more = (migrate_touched(plan, backend, memory, nodes, all_nodes) if migrate
                      else (False, ()))
    return Applied(memory=memory, threads=threads, notes=tuple(notes) + more,
                   migrated=migrated, mem_nodes=nodes)


def migrate_touched(plan: Plan, backend: Any, memory: str, nodes: Sequence[int],
                    all_nodes: Iterable[int]) -> Tuple[bool, Tuple[str, ...]]:
    """Move the pages touched before the bind to where ``memory`` over ``nodes`` (as
    it took effect) puts new ones; (whether they moved, why not)."""
    others = sorted(set(all_nodes) - set(nodes))
    if memory not in ("bind", "preferred", "local") or not others:
        return False, ()
    try:
        ranges, failed = backend.migrate(others, nodes if memory == "bind" else _home(plan))
    except (OSError, MemoryError) as exc:     # MemoryError: a maps text too big to read
        return False, (f"pages touched before binding stay where they are: "
                       f"{type(exc).__name__}: {exc}",)
    if failed:
        return False, (f"pages of {len(failed)} of {ranges} own memory ranges stay where "
                       f"they are: {failed[0]}",)
    return True, ()


def probe_mempolicy(node: int) -> Optional[OSError]:
    """Try ``set_mempolicy(MPOL_BIND, node)`` in a throwaway thread; the error, if any.

    Memory policy is per thread: probing on the caller's thread would leave it reset
    to "default" afterwards, undoing a binding the caller already has.
    """
    outcome: List[Optional[OSError]] = [None]

    def probe() -> None:
        try:
            syscalls.set_mempolicy("bind", [node])
        except OSError as exc:
            outcome[0] = exc

    thread = threading.Thread(target=probe, name="ray-numa-probe", daemon=True)
    thread.start()
    thread.join()
    return outcome[0]


def reset(backend: Any, cpus: FrozenSet[int]) -> None:
    """Undo a binding: back to ``cpus`` (the original affinity) and default policy."""
    backend.set_affinity(cpus)
    try:
        backend.set_mempolicy("default", ())
        backend.threads.took(("default", ()))
    except OSError:
        pass


def catch_up(backend: Any) -> bool:
    """Give the calling thread the memory policy the process should have, if it has
    another (the bind or follow ran on another thread); True if it changed."""
    threads = backend.threads
    if threads.wanted is None or threads.current():
        return False
    key = threads.wanted
    try:
        backend.set_mempolicy(*key)
    except OSError:              # it succeeded on another thread: not expected
        threads.tried()          # so not again at every task
        return False
    threads.had(key)             # what was set, though a follow may want another now
    return True


_NUMACTL_FLAG = {"bind": "--membind", "preferred": "--preferred",
                 "preferred_many": "--preferred-many", "interleave": "--interleave"}


def numactl_argv(plan: Plan, mode: Optional[str] = None,
                 nodes: Optional[Sequence[int]] = None) -> List[str]:
    """``numactl`` options for ``plan`` (exact CPUs, so cpuset limits are kept);
    ``mode``/``nodes`` pick one step of the ladder (default: the strongest)."""
    if mode is None:
        steps = _steps(plan)
        mode, nodes = (steps[0][1], steps[0][2]) if steps else ("none", ())
    mem = ([f"{_NUMACTL_FLAG[mode]}={format_cpulist(nodes or ())}"]
           if mode in _NUMACTL_FLAG else [])
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
    for memory, mode, nodes in _steps(plan) + [("none", "none", ())]:
        argv = numactl_argv(plan, mode, nodes)
        proc = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
        if proc.returncode == 0:
            if plan.memory != "none" and memory != plan.memory:
                notes.append(SYS_NICE_FIX + f"; memory policy is '{memory}' instead "
                             f"of '{plan.memory}'")
            return argv, memory, tuple(notes)
        notes.append(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return None, "none", tuple(notes)
