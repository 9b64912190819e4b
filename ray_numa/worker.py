"""Inside a Ray worker: bind when Ray tells the worker which GPUs it has.

Ray decides the GPUs only when it schedules the actor/task, after the worker
process exists, and announces them by calling
``ray._private.utils.set_visible_accelerator_ids()`` (looked up by attribute on every
normal task and on the actor-creation task, before the actor class is loaded and
``__init__`` runs). Wrapping that function is the earliest moment "auto" can bind.
An explicit node is bound at interpreter start instead (numactl prefix or syscalls).

A strict failure is *raised* later, from ``Worker.record_task_log_start``: Ray calls
that inside ``execute_task``'s handling of task errors, so the failure becomes the
task's or actor's own error (no retries, no restarts, no crashed worker), whereas an
exception from ``set_visible_accelerator_ids`` escapes that handling and kills the
worker as a system failure.

This module is imported by the bootstrap before ``default_worker.py`` runs, so it
imports only what every worker needs; the binding code loads at the first GPU
assignment, and the topology and GPU code only where the worker plans itself (see
``prepared.py``).
"""
from __future__ import annotations

import functools
import json
import os
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import environment

if TYPE_CHECKING:
    from .options import BindOptions

#: Ray's private functions this module wraps: (module, owner attribute or "", name).
ASSIGNMENT_HOOK = ("ray._private.utils", "", "set_visible_accelerator_ids")
TASK_START_HOOK = ("ray._private.worker", "Worker", "record_task_log_start")
#: Where a worker learns its task function's ``max_calls``, just after the assignment
#: (``execute_task_with_cancellation_handler``, Ray 2.48 to 2.60; only on the first
#: call of each function in a worker: Ray caches it).
EXECUTION_INFO_HOOK = ("ray._private.function_manager", "FunctionActorManager",
                       "get_execution_info")

_spec: Optional[str] = None                 # the plugin's RAY_NUMA_SPEC (JSON)
_auto = False
_start_error: Optional[Exception] = None    # explicit node: fails every task
_task_error: Optional[Exception] = None     # this task's GPU assignment (strict)
_raise_at_assignment = False                # no task-start hook in this Ray
_unsettled = False                          # a task bound as pooled until max_calls is known
NO_GPU = "no GPU assigned to this worker"   # policy.NO_GPU; policy is not loaded here


def install() -> None:
    """Read the plugin's ``RAY_NUMA_SPEC``; bind an explicit node right away."""
    global _spec, _auto
    spec = os.environ.get(environment.SPEC_ENV)
    if not spec:
        return
    environment.hold_log()
    options = json.loads(spec)      # the bootstrap reports an error: the worker runs unbound
    if not isinstance(options, dict):
        raise ValueError(f"{environment.SPEC_ENV} is not a JSON object: {spec[:200]!r}")
    _spec, _auto = spec, options.get("node") == "auto"
    _options.cache_clear()
    if not _auto:
        _bind_at_start(_options())
    # "auto" binds at assignment (see hook_ray), and follows the device torch selects
    # from then on (see on_assignment)


@functools.lru_cache(maxsize=None)
def _options() -> "BindOptions":
    """The options, built on first use: CPU-only workers never import ``options``."""
    from .options import BindOptions
    return BindOptions.from_json(_spec or "{}")


def _bind_at_start(options: "BindOptions") -> None:
    global _start_error
    from .apply import BindError
    from .binding import process_binder
    try:
        argv = json.loads(os.environ.get(environment.PREFIX_ENV) or "[]")
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            raise ValueError(f"{environment.PREFIX_ENV} is not a JSON list of strings")
        if argv:
            process_binder().adopt_numactl(options, argv)
        else:
            process_binder().bind(options)
    except BindError as exc:
        _start_error = exc    # raised as the first task's error (see module doc)
    except Exception as exc:  # never break the worker's start over binding
        if options.strict:
            _start_error = RuntimeError(f"numa_bind (strict): {type(exc).__name__}: {exc}")
        else:
            environment.warn_once(f"not binding: {type(exc).__name__}: {exc}; running unbound")


def _wrap(hook: tuple, make: Callable[[Callable], Callable], effect: str) -> bool:
    """Replace one of Ray's private functions with ``make(original)``; False and a
    warning naming the Ray version if this Ray lacks it."""
    module_name, owner_name, name = hook
    owner: Any = sys.modules.get(module_name)
    if owner is not None and owner_name:
        owner = getattr(owner, owner_name, None)
    original = getattr(owner, name, None) if owner is not None else None
    if not callable(original):
        where = ".".join(p for p in (module_name, owner_name, name) if p)
        environment.logger().warning("%s", environment.ray_hook_missing(where, effect))
        return False
    wrapper = functools.wraps(original)(make(original))
    setattr(owner, name, wrapper)
    return True


def hook_ray(ray_worker_module: Any = None) -> None:
    """Wrap Ray's hooks; the bootstrap calls this right after ``ray._private.worker``
    is imported (``ray._private.utils`` is loaded by then)."""
    global _raise_at_assignment
    if _spec is None:
        return

    def after_assignment(original: Callable) -> Callable:
        def set_visible_accelerator_ids(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            on_assignment()
            return result
        return set_visible_accelerator_ids

    def before_task(original: Callable) -> Callable:
        def record_task_log_start(self: Any, *args: Any, **kwargs: Any) -> Any:
            settle(None)        # a function this worker ran before: it is pooled
            raise_pending()
            catch_up()
            return original(self, *args, **kwargs)
        return record_task_log_start

    def after_execution_info(original: Callable) -> Callable:
        def get_execution_info(self: Any, *args: Any, **kwargs: Any) -> Any:
            info = original(self, *args, **kwargs)
            settle(getattr(info, "max_calls", None))
            return info
        return get_execution_info

    if _auto:
        _wrap(ASSIGNMENT_HOOK, after_assignment,
              "to bind 'auto' workers when GPUs are assigned: running unbound")
        _wrap(EXECUTION_INFO_HOOK, after_execution_info, "to learn a task's max_calls: "
              "every GPU task's worker keeps the pooled memory policy 'local'")
    _raise_at_assignment = not _wrap(
        TASK_START_HOOK, before_task, "to make a strict failure the task's own error: "
        "it fails the worker instead (Ray may retry the task)")


def log_ready() -> None:
    """Ray has pointed stderr at this worker's log: write what was held back."""
    environment.release_log()


def _assigned_gpu_ids() -> list:
    import ray
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def _pooled() -> bool:
    """A normal-task worker, which Ray may reuse for a task with other GPUs unless its
    function's max_calls is 1 (see :func:`settle`); an actor's worker is its own."""
    import ray
    return ray.get_runtime_context().get_actor_id() is None


def on_assignment() -> None:
    """Called after Ray set the visible accelerators for a task or actor. Never
    raises (see the module doc) unless this Ray lacks the task-start hook.

    A normal task's worker is bound as pooled: its function's ``max_calls``, which
    says whether Ray may reuse it, is known only a moment later (:func:`settle`).
    """
    global _task_error, _unsettled
    _task_error, _unsettled = None, False
    if _start_error is not None:     # explicit node, strict: fail every task
        if _raise_at_assignment:      # this Ray has no task-start hook to raise it from
            raise _start_error
        return
    if not _auto:
        return
    try:
        gpu_ids = _assigned_gpu_ids()
        binding = sys.modules.get(f"{__package__}.binding")
        if not gpu_ids and getattr(binding, "_binder", None) is None:
            # CPU-only work, never bound: nothing to bind or undo, nothing to import
            environment.untouched_reason = NO_GPU
            return
        # Follow the CUDA device the worker then selects (vLLM on Ray drives another
        # GPU than Ray's): the torch import hook goes in now, not at start, so Ray's own
        # ~2000 imports never pass through it and CPU-only workers never have it.
        from .follow import install as follow_selected_device
        follow_selected_device()
        from .binding import process_binder
        _unsettled = _pooled()
        process_binder().bind(_options(), gpu_ids, gpu_rule="assigned", pooled=_unsettled)
    except Exception as exc:  # never break a user's task over binding
        _failed(exc)
    _raise_if_no_task_hook()


def settle(max_calls: Optional[int]) -> None:
    """Ray has loaded this task's function: with ``max_calls=1`` (Ray's default for
    GPU tasks) the worker exits after it, so it is not pooled and gets the memory
    policy asked for; ``None``: a function it ran before, so it is pooled. Never
    raises, like :func:`on_assignment`."""
    global _unsettled
    if not _unsettled:
        return
    _unsettled = False
    why = ("Ray did not say this task's max_calls (its worker ran the function before), "
           "so it may reuse the worker" if max_calls is None else
           f"this task's function has max_calls={max_calls}, so Ray may reuse its worker")
    try:
        from .binding import process_binder
        process_binder().settle(pooled=max_calls != 1, why=why)
    except Exception as exc:  # never break a user's task over binding
        _failed(exc)
    _raise_if_no_task_hook()


def _failed(exc: Exception) -> None:
    """Binding at assignment failed: strict's reason is the task's error, else a warning."""
    global _task_error
    apply = sys.modules.get(f"{__package__}.apply")   # loaded if binding imported
    if apply is not None and isinstance(exc, apply.BindError):   # strict's reason
        _task_error = exc
    elif json.loads(_spec or "{}").get("strict"):
        _task_error = RuntimeError(f"numa_bind (strict): {type(exc).__name__}: {exc}")
    else:
        environment.warn_once(f"not binding: {type(exc).__name__}: {exc}; running unbound")
    if _task_error is not None:
        environment.logger().error("%s", _task_error)


def _raise_if_no_task_hook() -> None:
    if _task_error is not None and _raise_at_assignment:
        raise _task_error


def catch_up() -> None:
    """On the thread about to run a task: take the process's memory policy if a bind
    or follow on another thread left this one with an older one (a memory policy is
    per thread). Ray runs each task's start on the thread that runs it: main for
    tasks and plain actors, the pool thread of a threaded actor, the fiber thread of
    an async actor (whose methods then run on its event loop thread)."""
    binder = getattr(sys.modules.get(f"{__package__}.binding"), "_binder", None)
    if binder is not None:
        binder.catch_up()
        _catch_up_event_loop(binder)


#: Ray's CoreWorker.get_event_loop(descriptor, cg) answers the default loop for "__init__"
_INIT = SimpleNamespace(function_name="__init__")


def _catch_up_event_loop(binder: Any) -> None:
    """An async actor's methods run on its event loop thread, not on the (fiber) thread
    that starts the task, and that loop may predate the bind: while the loop's thread
    lacks the policy, queue the catch-up on the loop, ahead of the method's coroutine."""
    try:
        import ray
        core_worker = ray._private.worker.global_worker.core_worker
        if not core_worker.current_actor_is_asyncio():
            return
        loop, thread = core_worker.get_event_loop(_INIT, None)
        if loop is not None and binder.lacks_policy(thread.native_id):
            loop.call_soon_threadsafe(binder.catch_up)
    except Exception as exc:   # a Ray whose internals moved: the loop keeps its policy
        environment.warn_once(f"memory policy not applied to the async actor's event loop "
                              f"thread: {type(exc).__name__}: {exc}")


def raise_pending() -> None:
    """Raise this worker's strict failure inside Ray's task-error handling."""
    error = _start_error or _task_error
    if error is not None:
        raise error
