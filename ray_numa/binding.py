"""Resolve, decide, apply, record: the one flow behind every entry point.

The Ray worker hook, :func:`ray_numa.bind_current_process` and ``ray-numa exec`` all
call :class:`Binder`. It remembers the affinity the process started with, so a
pooled Ray task worker that gets another GPU is rebound relative to that, and a
CPU-only task after a GPU task gets its CPUs back.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

from . import environment, ledger
from .apply import (BindError, RecordingBackend, SyscallBackend, apply_plan, catch_up,
                    migrate_touched, reset)
from .cpusets import format_cpulist, parse_cpulist, process_limits
from .decision import Plan, Skip
from .prepared import lookup as prepared_plan
from .record import UNBOUND, Binding

NOT_SET = "not set by ray-numa"   # thread_policies' memory for a thread it set none on

if TYPE_CHECKING:   # loaded only to plan here (prepared.py): topology, options
    from .options import BindOptions
    from .topology import Allowed, Topology


_NUMACTL_MEMORY = {"--membind": "bind", "--preferred": "preferred",
                   "--preferred-many": "preferred", "--interleave": "interleave"}


#: Why a pooled task worker gets "local" instead of the memory policy asked for.
POOLED_NOTE = ("pooled task worker (its function's max_calls is not 1, so Ray may reuse it "
               "for a task with other GPUs): memory policy 'local' (allocate on the node of "
               "the CPU that runs the thread) instead of '{memory}', because a memory policy "
               "is per thread and threads started while bound would keep the old node's "
               "after a rebind; CPU affinity, which moves every thread, steers memory")
#: Why strict refuses a pooled worker; max_calls=1 is Ray's default for GPU tasks.
POOLED_STRICT = ("numa_bind (strict): memory '{memory}' was asked for, but {why}; {note}. "
                 "Give the function max_calls=1 (Ray's default for GPU tasks), or drop strict")


def for_pooled_worker(plan: Plan) -> Plan:
    """The plan for a worker Ray may reuse for a task with other GPUs.

    ``set_mempolicy`` changes only the calling thread, and no syscall changes another
    thread's policy, so a rebind cannot reach threads a previous task started with a
    strict policy. With "local" every thread allocates where it runs, and the
    affinity, which :func:`apply_plan` sets on every thread, decides where that is.
    """
    if plan.memory in ("none", "local"):
        return plan
    return plan._replace(
        memory="local", reason=plan.reason.replace(f", memory {plan.memory} ", ", memory local "),
        notes=plan.notes + (POOLED_NOTE.format(memory=plan.memory),))


class Binder:
    """Per-process binding state; see :func:`process_binder`."""

    def __init__(self) -> None:
        self.simulated = environment.simulated()
        self.backend = RecordingBackend() if self.simulated else SyscallBackend()
        self.limits = process_limits()     # before any binding narrows the affinity
        self._node_ids: Optional[Tuple[int, ...]] = None   # all nodes, from the agent's plans
        self.binding = UNBOUND
        self._gpu_key: Optional[Tuple[str, ...]] = None
        self._options: Optional[BindOptions] = None   # of the last bind, for follow()
        self._followed: Tuple[str, ...] = ()          # devices selected since then
        self._pooled = False                          # of the last bind, for follow()
        self._plan: Optional[Plan] = None             # of the last bind, for settle()
        self._unsettled = False     # bound as pooled, not yet said: settle() says it
        self._migrate_late = False  # pages left for settle() to move, once
        self._nic_set: Dict[str, str] = {}            # variables nic_env wrote, owned
        self._record_lock = threading.RLock()  # one record at a time; _with_nic nests

    @functools.cached_property
    def topology(self) -> Topology:
        """Read on first use: a worker binding with the agent's plan needs none."""
        from .topology import machine_topology
        return machine_topology()

    @functools.cached_property
    def allowed(self) -> Allowed:
        """What the cgroup and the affinity allowed this process when it started."""
        from .topology import process_allowed
        return process_allowed(self.topology, self.limits)

    def _plan_here(self, options: BindOptions, gpus: Tuple[str, ...]) -> Any:
        """Plan here; the planner loads on first use (a prepared plan never needs it)."""
        from .planning import plan_for
        return plan_for(options, gpus, self.topology, self.allowed)

    def _decide(self, options: BindOptions, gpus: Tuple[str, ...]) -> Any:
        """The agent's plan for one GPU if it holds here (prepared.py), else one made here."""
        prepared = prepared_plan(options, gpus, self.limits) if options.auto else None
        if prepared is None:
            return self._plan_here(options, gpus)
        decision, self._node_ids = prepared
        return decision

    def _record(self, binding: Binding) -> Binding:
        with self._record_lock:
            calls = tuple(getattr(self.backend, "calls", ()))
            self.binding = binding._replace(calls=calls,
                                            thread_policies=self._thread_policies())
            ledger.publish(self.binding)      # for `ray-numa audit`, from another process
            return self.binding

    def _thread_policies(self) -> Tuple[Dict[str, Any], ...]:
        """See :attr:`Binding.thread_policies`: every live thread, those ray-numa never
        set a policy on (started before a follow, or on a loop that runs no Ray task
        hook: another concurrency group, Serve's user-code thread) as not set by it."""
        threads = self.backend.threads
        if not threads.lagging():
            return ()
        main = threading.main_thread().native_id
        known = dict(threads.by_thread)
        out = []
        for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
            mode, nodes = known.get(tid, (NOT_SET, ()))
            out.append({"tid": tid, "main": tid == main, "memory": mode, "nodes": list(nodes)})
        return tuple(out)

    def lacks_policy(self, thread_id: int) -> bool:
        """Whether ``thread_id`` may lack the memory policy of the last bind or follow."""
        threads = self.backend.threads
        return threads.wanted is not None and threads.by_thread.get(thread_id) != threads.wanted

    def catch_up(self) -> None:
        """At a task's start, on the thread that runs it: take the memory policy of the
        last bind or follow if this thread lacks it. Never raises (a task hook)."""
        try:
            if catch_up(self.backend):      # once per thread and bind: record it
                with self._record_lock:     # the binding as it is now, a follow's too
                    self._record(self.binding)
        except Exception as exc:
            environment.warn_once(f"memory policy not applied to thread "
                                  f"{threading.get_native_id()}: {type(exc).__name__}: {exc}")

    def skip(self, skip: Skip, options: BindOptions, gpus: Tuple[str, ...] = (),
             gpu_rule: str = "") -> Binding:
        """Record (or, if strict, raise) that binding is not possible."""
        if options.strict and not skip.quiet:   # quiet: nothing to bind (no GPU)
            raise BindError(f"numa_bind (strict): {skip.message()}")
        if not skip.quiet:
            environment.warn_once(f"not binding: {skip.message()}; running unbound")
        else:     # nothing to bind (no GPU, one NUMA node): said, not warned
            environment.logger().info("not binding: %s", skip.message())
        return self._record(Binding(status="skipped", reason=skip.message(), gpus=gpus,
                                    gpu_rule=gpu_rule))

    def bind(self, options: BindOptions, gpu_ids: Sequence[str] = (),
             gpu_rule: str = "", pooled: bool = False) -> Binding:
        """Bind this process for ``options`` (and the GPUs named, for "auto");
        ``gpu_rule`` says which rule chose them (see :attr:`Binding.gpu_rule`);
        ``pooled``: a worker that may be rebound later (see :func:`for_pooled_worker`)."""
        gpus = tuple(str(g) for g in gpu_ids)
        if not options.enabled:
            return self._record(Binding(status="off", reason='numa_bind is "off"'))
        if environment.disabled():
            return self._record(Binding(
                status="off", reason=f"{environment.DISABLE_ENV} is set (kill switch)"))
        if options.auto and gpus == self._gpu_key:
            return self.binding            # same GPUs as the last task: nothing to do
        decision = self._decide(options, gpus)
        # The key is set only once this assignment's outcome is recorded: a strict
        # failure must fail the next task with the same GPUs too (Ray keeps the worker).
        self._gpu_key = None
        # "auto" follows a device only for a worker that holds GPUs: a CPU-only task
        # (from Ray 2.56 it sees every GPU) selecting one has nothing to be near
        self._options = options if gpus or not options.auto else None
        self._followed, self._pooled = (), pooled
        self._plan = decision if isinstance(decision, Plan) else None
        self._unsettled = pooled
        if isinstance(decision, Skip):
            if self.binding.status == "bound":   # a pooled worker's previous task
                reset(self.backend, self.allowed.cpus)
            binding = self.skip(decision, options, gpus, gpu_rule)
        else:
            try:
                binding = self._apply(decision, options, gpus, gpu_rule)
            except OSError as exc:
                binding = self.skip(Skip(f"the kernel refused the CPU affinity: {exc}"),
                                    options, gpus, gpu_rule)
        self._gpu_key = gpus if options.auto else None
        return self._with_nic(binding, options, gpus)

    def _with_nic(self, binding: Binding, options: BindOptions,
                  gpus: Tuple[str, ...]) -> Binding:
        """Point the RDMA libraries at the GPUs' NIC (``options.nic``), or take back
        what was set for a previous task's GPUs; record it."""
        if not (options.nic and gpus) and not self._nic_set:
            return binding
        from .nic_env import settle
        outcome = settle(options.nic, gpus, self._nic_set)
        self._nic_set = outcome.ours
        for note in outcome.notes:
            environment.warn_once(note)
        return self._record(binding._replace(
            nic=outcome.nets, nic_path=outcome.path, nic_vars=outcome.assigned,
            notes=binding.notes + outcome.notes))

    def settle(self, pooled: bool, why: str) -> Binding:
        """Ray has said whether this task's worker may run another task (``why``): one
        that cannot (max_calls=1) gets the memory policy asked for instead of the
        pooled one it was bound with at assignment; strict refuses a pooled worker
        the weaker policy (BindError). OSError: the kernel refused the affinity."""
        plan, options, before = self._plan, self._options, self.binding
        unsaid, self._unsettled = self._unsettled, False
        late, self._migrate_late = self._migrate_late, False
        if plan is None or options is None or before.status != "bound" or not self._pooled:
            return before
        if pooled:
            if options.strict and for_pooled_worker(plan).memory != plan.memory:
                self._gpu_key = None          # the next task with these GPUs fails too
                raise BindError(POOLED_STRICT.format(
                    memory=plan.memory, why=why, note=POOLED_NOTE.format(memory=plan.memory)))
        else:
            self._pooled = False
            if for_pooled_worker(plan) != plan:   # a stronger policy was asked for
                return self._apply(plan, options, before.gpus, before.gpu_rule,
                                   before.history)
        if late:                               # the pooled policy stands: move pages now
            _, notes = migrate_touched(plan, self.backend, before.memory,
                                           before.mem_nodes, self._all_nodes())
            for note in notes:
                environment.warn_once(note)
            before = self._record(before._replace(notes=before.notes + notes))
        if unsaid:
            _say(before, logging.INFO)
        return before

    def _all_nodes(self) -> Tuple[int, ...]:
        return self._node_ids if self._node_ids is not None else tuple(self.topology.nodes)

    def _apply(self, plan: Plan, options: BindOptions, gpus: Tuple[str, ...],
               gpu_rule: str, history: Tuple[Dict[str, Any], ...] = ()) -> Binding:
        """Apply ``plan`` (as a pooled worker's if the last bind said so) and record
        what took effect; strict raises after recording a weaker memory policy.
        OSError: the kernel refused the CPU affinity (nothing recorded)."""
        if self._pooled:
            plan = for_pooled_worker(plan)
        # Bound as pooled before Ray says max_calls: settle() may apply a stronger
        # policy, so pages move once, there, not twice.
        self._migrate_late = options.migrate and self._unsettled
        applied = apply_plan(plan, self.backend, options.migrate and not self._unsettled,
                             self._all_nodes())
        binding = self._bound(plan, applied.memory, self.backend.name, gpus,
                              plan.notes + applied.notes, applied.mem_nodes, gpu_rule,
                              history)
        if options.strict and applied.memory != plan.memory:
            raise BindError(f"numa_bind (strict): {'; '.join(applied.notes)}")
        for note in applied.notes:
            environment.warn_once(note)
        return binding

    def adopt_numactl(self, options: BindOptions, argv: Sequence[str]) -> Binding:
        """Record a binding that ``numactl`` applied before this interpreter started."""
        decision = self._plan_here(options, ())
        if isinstance(decision, Skip):   # cannot happen unless the machine changed
            return self.skip(decision, options, ())
        memory, nodes = "none", ()
        for arg in argv:       # what numactl was told, after the plugin's probe ladder
            flag, _, value = arg.partition("=")
            if flag in _NUMACTL_MEMORY:
                memory, nodes = _NUMACTL_MEMORY[flag], tuple(sorted(parse_cpulist(value)))
        if self.simulated:
            self.backend.calls.append(("numactl", *argv))
        return self._bound(decision, memory, "numactl", (), decision.notes, nodes)

    def _bound(self, plan: Plan, memory: str, backend: str, gpus: Tuple[str, ...],
               notes: Tuple[str, ...], mem_nodes: Tuple[int, ...], gpu_rule: str = "",
               history: Tuple[Dict[str, Any], ...] = ()) -> Binding:
        """Record what was applied: ``memory``/``mem_nodes`` as they took effect."""
        binding = self._record(Binding(
            status="bound", reason=plan.reason, cpus=format_cpulist(plan.cpus),
            cpu_nodes=plan.cpu_nodes, mem_nodes=mem_nodes if memory != "none" else (),
            memory=memory, gpus=gpus, gpu_rule=gpu_rule, history=history, backend=backend,
            notes=notes))
        # a task worker's policy is final once Ray says its max_calls (settle): one line
        _say(binding, logging.DEBUG if self._unsettled else logging.INFO)
        return binding

    def follow(self, gpu_id: str) -> Binding:
        """The process selected CUDA device ``gpu_id`` (the node's id for it): bind for
        the union of the devices it selected since the last bind, as ``span`` says.

        Rebinds (every thread's affinity, the memory policy, pages migrated) only when
        that changes the CPUs or memory nodes, i.e. for ``cpus="node"`` only when the
        node changes; the earlier binding goes into ``history`` either way.
        """
        options = self._options
        if options is None or not options.auto or gpu_id in self._followed:
            return self.binding
        self._followed += (gpu_id,)
        before, gpus = self.binding, self._followed
        if gpus == before.gpus:
            return before                  # drives what it was bound for: nothing to do
        decision = self._plan_here(options, gpus)
        history = before.history + (before._replace(history=()).as_dict(),)
        if isinstance(decision, Skip):
            if options.strict:
                raise BindError(f"numa_bind (strict): cannot follow GPU {gpu_id}: "
                                f"{decision.message()}")
            if before.status == "bound" and not decision.quiet:   # else: said at bind
                environment.warn_once(f"not following GPU {','.join(gpus)}: "
                                      f"{decision.message()}; binding stays as it was")
            return before
        # The next assignment binds afresh (and forgets what was followed): a pooled
        # worker's next task may select another device.
        self._gpu_key = None
        if (before.status == "bound" and before.cpus == format_cpulist(decision.cpus)
                and before.mem_nodes == (decision.mem_nodes if before.memory != "none"
                                         else ())):
            return self._with_nic(self._record(before._replace(   # same node: no syscalls
                gpus=gpus, history=history, gpu_rule="followed device")), options, gpus)
        try:
            return self._with_nic(self._apply(decision, options, gpus, "followed device",
                                              history), options, gpus)
        except OSError as exc:
            message = f"not following GPU {gpu_id}: the kernel refused the binding: {exc}"
            if options.strict:
                raise BindError(f"numa_bind (strict): {message}") from exc
            environment.warn_once(message)
            return before

    def unbind(self, reason: str) -> Binding:
        reset(self.backend, self.allowed.cpus)
        self._gpu_key = None
        return self._record(Binding(status="unbound", reason=reason))


def _say(binding: Binding, level: int) -> None:
    """The log line of a binding: what took effect, as the record says it."""
    history = binding.history
    verb = (f"rebound from GPU {','.join(history[-1]['gpus']) or '-'} to GPU "
            f"{','.join(binding.gpus)}, the {binding.gpu_rule}" if history else "bound")
    environment.logger().log(
        level, "pid %d %s: %s (CPUs %s, memory %s%s, via %s)", os.getpid(), verb,
        binding.reason, binding.cpus, binding.memory,
        f" {format_cpulist(binding.mem_nodes)}" if binding.mem_nodes else "", binding.backend)


_binder: Optional[Binder] = None


def process_binder() -> Binder:
    """The process's binder, created on first use (capturing the start affinity)."""
    global _binder
    if _binder is None:
        _binder = Binder()
    return _binder


PLUGIN_MISSING = ("numa_bind was requested but the ray-numa plugin is not enabled on "
                  "this node; start Ray there after: eval \"$(ray-numa env)\"")


def _requested_without_plugin() -> bool:
    """A Ray worker whose runtime_env asks for numa_bind that no plugin acted on."""
    ray = sys.modules.get("ray")
    if ray is None or os.environ.get(environment.SPEC_ENV) or not ray.is_initialized():
        return False
    try:
        value = ray.get_runtime_context().runtime_env.get("numa_bind")
    except Exception:
        return False
    return value not in (None, "off")


#: What ``current_binding()`` says in the process that called ``ray.init``.
DRIVER = ("this is the Ray driver (the process that called ray.init): ray-numa binds the "
          "workers Ray starts for tasks and actors, never the driver; to bind the driver "
          "itself, call ray_numa.bind_current_process()")


def _ray_driver() -> bool:
    """Connected to Ray as its driver: Ray's own test (``RuntimeContext`` compares
    the worker's mode; a driver runs in SCRIPT_MODE, a worker in WORKER_MODE, and
    the mode is None when not connected)."""
    worker = sys.modules.get("ray._private.worker")
    mode = getattr(getattr(worker, "global_worker", None), "mode", None)
    return mode is not None and mode == getattr(worker, "SCRIPT_MODE", None)


def current_binding() -> Binding:
    """What this process is bound to, and why; ``status == "unbound"`` if untouched."""
    if _binder is not None:
        return _binder.binding
    if os.environ.get(environment.BOOT_ERROR_ENV):
        return Binding(status="unbound", reason=os.environ[environment.BOOT_ERROR_ENV])
    if environment.untouched_reason:            # the worker hook had nothing to bind
        return Binding(status="skipped", reason=environment.untouched_reason)
    if _ray_driver():
        return Binding(status="unbound", reason=DRIVER)
    if _requested_without_plugin():
        return Binding(status="unbound", reason=PLUGIN_MISSING)
    return UNBOUND
