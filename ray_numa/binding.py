"""Resolve, decide, apply, record: the one flow behind every entry point.

The Ray worker hook, :func:`ray_numa.bind_current_process` and ``ray-numa exec`` all
call :class:`Binder`. It remembers the affinity the process started with, so a
pooled Ray task worker that gets another GPU is rebound relative to that, and a
CPU-only task after a GPU task gets its CPUs back.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from collections import namedtuple
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from . import environment, ledger
from .apply import BindError, RecordingBackend, SyscallBackend, apply_plan, catch_up, reset
from .cpusets import format_cpulist, parse_cpulist, process_limits
from .policy import NO_GPU, SPLIT_MODES, Plan, Skip, Target, decide
from .prepared import lookup as prepared_plan

if TYPE_CHECKING:   # loaded only to plan here (prepared.py): topology, GPUs, options
    from .gpus import Gpu
    from .options import BindOptions
    from .topology import Allowed, Topology


class Binding(namedtuple("Binding", "status reason cpus cpu_nodes mem_nodes memory gpus "
                         "gpu_rule history backend notes calls thread_policies",
                         defaults=("", (), (), "none", (), "", (), "", (), (), ()))):
    """What this process is bound to and why (``status``: bound|skipped|off|unbound).

    A typed result like psutil's, and built like psutil's: a ``collections.namedtuple``
    subclass, the annotations documenting its fields (why: see ``policy.py``).
    """
    __slots__ = ()
    status: str
    reason: str
    cpus: str                      # kernel list format, e.g. "0-55,112-167"; default ""
    cpu_nodes: Tuple[int, ...]     # default ()
    mem_nodes: Tuple[int, ...]     # default ()
    memory: str                    # default "none"
    gpus: Tuple[str, ...]          # the device ids bound for, as Ray/CUDA named them; ()
    #: Which rule chose the GPU(s): "assigned" (Ray's assignment), "followed device"
    #: (the CUDA device the process selected), "local rank", "only visible GPU",
    #: "device index"; "" (the default) for an explicit node.
    gpu_rule: str
    #: Earlier bindings of this process, oldest first (each an ``as_dict()`` without
    #: its own history), e.g. the bind at assignment before following the device; ().
    history: Tuple[Dict[str, Any], ...]
    backend: str                   # numactl | syscall | record; default ""
    notes: Tuple[str, ...]         # default ()
    calls: Tuple[Tuple[Any, ...], ...]   # what the recording backend did; default ()
    #: Set while the threads ray-numa set a memory policy on disagree: a memory policy is
    #: per thread, so a bind or follow on a thread other than main (an async actor's
    #: event loop, a threaded actor's pool) leaves main, and the threads it starts, with
    #: the old one until main runs a task. One ``{"tid", "main", "memory", "nodes"}``
    #: per live thread; () (the default) when they all have ``memory``/``mem_nodes``.
    thread_policies: Tuple[Dict[str, Any], ...]

    def as_dict(self) -> Dict[str, Any]:
        return self._asdict()


_NUMACTL_MEMORY = {"--membind": "bind", "--preferred": "preferred",
                   "--preferred-many": "preferred", "--interleave": "interleave"}

UNBOUND = Binding(status="unbound", reason="ray_numa has not bound this process")

#: Why a pooled task worker gets "local" instead of the memory policy asked for.
POOLED_NOTE = ("pooled task worker: memory policy 'local' (allocate on the node of the CPU "
               "that runs the thread) instead of '{memory}', because a memory policy is "
               "per thread and threads started while bound would keep the old node's "
               "after a rebind; CPU affinity, which moves every thread, steers memory")


def for_pooled_worker(plan: Plan) -> Plan:
    """The plan for a worker Ray may reuse for a task with other GPUs.

    ``set_mempolicy`` changes only the calling thread, and no syscall changes another
    thread's policy, so a rebind cannot reach threads a previous task started with a
    strict policy. With "local" every thread allocates where it runs, and the
    affinity, which :func:`apply_plan` sets on every thread, decides where that is.
    """
    if plan.memory == "none":
        return plan
    return plan._replace(memory="local",
                         notes=plan.notes + (POOLED_NOTE.format(memory=plan.memory),))


def _targets(gpu_ids: Sequence[str], topo: Topology,
             options: BindOptions) -> Tuple[List[Target], List[Optional[int]]]:
    """The assigned GPUs as targets, and every GPU's node (PCI order) where the CPU
    mode splits a node among its GPUs; other modes read only the assigned GPUs'."""
    from .gpus import GpuResolutionError, discover_gpus, gpu_numa_node, resolve_visible
    gpus, source = discover_gpus()
    if not gpus:
        raise GpuResolutionError(
            f"GPU(s) {', '.join(gpu_ids)} were assigned but this machine shows no NVIDIA "
            f"GPU (from {source}); with fake num_gpus there is nothing to bind to")
    chosen = resolve_visible(gpu_ids, gpus, os.environ.get("CUDA_DEVICE_ORDER"))

    def node_of(gpu: Gpu) -> Optional[int]:
        return gpu_numa_node(gpu, environment.sys_root(), topo.nodes)

    peers = [node_of(g) for g in gpus] if options.cpus in SPLIT_MODES else []
    targets = [Target(label=f"GPU {g.index} ({g.bus_id})", peer=g.index,
                      node=peers[g.index] if peers else node_of(g)) for g in chosen]
    return targets, peers


def plan_for(options: BindOptions, gpu_ids: Sequence[str] = (),
             topology: Optional[Topology] = None,
             allowed: Optional[Allowed] = None) -> Any:
    """The :class:`Plan` or :class:`Skip` for ``options`` on this machine."""
    from .gpus import GpuResolutionError
    from .topology import machine_topology, process_allowed
    topo = topology or machine_topology()
    allowed = allowed or process_allowed(topo)
    if options.auto:
        if not gpu_ids:
            return Skip(NO_GPU, quiet=True)
        try:
            targets, peers = _targets(gpu_ids, topo, options)
        except GpuResolutionError as exc:
            return Skip(str(exc))
    else:
        targets = [Target(label=f"node {n}", node=n) for n in options.node]
        peers = []
    return decide(topo, allowed, options, targets, peers)


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

    def _decide(self, options: BindOptions, gpus: Tuple[str, ...]) -> Any:
        """The agent's plan for a worker's one GPU if it holds here (prepared.py),
        else the plan made here."""
        prepared = prepared_plan(options, gpus, self.limits) if options.auto else None
        if prepared is None:
            return plan_for(options, gpus, self.topology, self.allowed)
        decision, self._node_ids = prepared
        return decision

    def _record(self, binding: Binding) -> Binding:
        calls = tuple(getattr(self.backend, "calls", ()))
        self.binding = binding._replace(calls=calls, thread_policies=self._thread_policies())
        ledger.publish(self.binding)      # for `ray-numa audit`, from another process
        return self.binding

    def _thread_policies(self) -> Tuple[Dict[str, Any], ...]:
        """See :attr:`Binding.thread_policies`."""
        threads = self.backend.threads
        if not threads.lagging():
            return ()
        main = threading.main_thread().native_id
        return tuple({"tid": tid, "main": tid == main, "memory": mode, "nodes": list(nodes)}
                     for tid, (mode, nodes) in sorted(threads.by_thread.items())
                     if os.path.exists(f"/proc/self/task/{tid}"))

    def lacks_policy(self, thread_id: int) -> bool:
        """Whether ``thread_id`` may lack the memory policy of the last bind or follow."""
        threads = self.backend.threads
        return threads.wanted is not None and threads.by_thread.get(thread_id) != threads.wanted

    def catch_up(self) -> None:
        """At a task's start, on the thread that runs it: take the memory policy of the
        last bind or follow if this thread lacks it. Never raises (a task hook)."""
        try:
            if catch_up(self.backend):      # once per thread and bind: record it
                with _record_lock:
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
        self._options, self._followed, self._pooled = options, (), pooled
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
        return binding

    def _apply(self, plan: Plan, options: BindOptions, gpus: Tuple[str, ...],
               gpu_rule: str, history: Tuple[Dict[str, Any], ...] = ()) -> Binding:
        """Apply ``plan`` (as a pooled worker's if the last bind said so) and record
        what took effect; strict raises after recording a weaker memory policy.
        OSError: the kernel refused the CPU affinity (nothing recorded)."""
        if self._pooled:
            plan = for_pooled_worker(plan)
        nodes = self._node_ids if self._node_ids is not None else tuple(self.topology.nodes)
        applied = apply_plan(plan, self.backend, options.migrate, nodes)
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
        decision = plan_for(options, (), self.topology, self.allowed)
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
        verb = (f"rebound from GPU {','.join(history[-1]['gpus']) or '-'} to GPU "
                f"{','.join(gpus)}, the {gpu_rule}" if history else "bound")
        environment.logger().info(
            "pid %d %s: %s (CPUs %s, memory %s%s, via %s)", os.getpid(), verb, plan.reason,
            binding.cpus, memory, f" {format_cpulist(binding.mem_nodes)}"
            if binding.mem_nodes else "", backend)
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
        decision = plan_for(options, gpus, self.topology, self.allowed)
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
            return self._record(before._replace(   # same node: no syscalls
                gpus=gpus, history=history, gpu_rule="followed device"))
        try:
            return self._apply(decision, options, gpus, "followed device", history)
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


_binder: Optional[Binder] = None
_record_lock = threading.Lock()   # task threads catching up at once record in turn


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


def current_binding() -> Binding:
    """What this process is bound to, and why; ``status == "unbound"`` if untouched."""
    if _binder is not None:
        return _binder.binding
    if os.environ.get(environment.BOOT_ERROR_ENV):
        return Binding(status="unbound", reason=os.environ[environment.BOOT_ERROR_ENV])
    if environment.untouched_reason:            # the worker hook had nothing to bind
        return Binding(status="skipped", reason=environment.untouched_reason)
    if _requested_without_plugin():
        return Binding(status="unbound", reason=PLUGIN_MISSING)
    return UNBOUND
