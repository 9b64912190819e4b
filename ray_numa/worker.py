"""Inside a Ray worker: bind when Ray tells the worker which GPUs it has.

Ray decides the GPUs only when it schedules the actor/task, after the worker
process exists, and announces them by calling
``ray._private.utils.set_visible_accelerator_ids()`` (looked up by attribute on every
normal task and on the actor-creation task, before the actor class is loaded and
``__init__`` runs). Wrapping that function is the earliest moment "auto" can bind.
An explicit node is bound at interpreter start instead (numactl prefix or syscalls).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from . import environment
from .apply import BindError
from .binding import process_binder
from .options import BindOptions

_pending_error: Optional[BindError] = None


def _assigned_gpu_ids():
    import ray
    return [str(i) for i in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]


def on_assignment(options: BindOptions) -> None:
    """Called after Ray set the visible accelerators for a task or actor."""
    if _pending_error is not None:
        raise _pending_error
    if not options.auto:
        return
    try:
        process_binder().bind(options, _assigned_gpu_ids(), gpu_rule="assigned")
    except BindError:
        raise
    except Exception as exc:  # never break a user's task over binding
        if options.strict:
            raise BindError(f"numa_bind (strict): {exc}") from exc
        environment.warn_once(f"not binding: {type(exc).__name__}: {exc}; running unbound")


def _bind_at_start(options: BindOptions) -> None:
    global _pending_error
    argv = json.loads(os.environ.get(environment.PREFIX_ENV) or "[]")
    try:
        if argv:
            process_binder().adopt_numactl(options, argv)
        else:
            process_binder().bind(options)
    except BindError as exc:
        # Raised at the first task instead, so it fails the actor with this message
        # rather than killing a worker that Ray would only start again.
        _pending_error = exc


def install() -> None:
    """Set up binding for this worker from the plugin's ``RAY_NUMA_SPEC``."""
    spec = os.environ.get(environment.SPEC_ENV)
    if not spec:
        return
    options = BindOptions.from_json(spec)
    if not options.auto:
        _bind_at_start(options)
    else:   # bind at assignment, then follow the device torch selects (vLLM on Ray)
        __import__("ray_numa.follow").follow.install()
    import ray._private.utils as ray_utils

    original = ray_utils.set_visible_accelerator_ids

    def set_visible_accelerator_ids(*args, **kwargs):
        result = original(*args, **kwargs)
        on_assignment(options)
        return result

    set_visible_accelerator_ids.__wrapped__ = original  # type: ignore[attr-defined]
    ray_utils.set_visible_accelerator_ids = set_visible_accelerator_ids
