"""Follow the CUDA device the process selects, not only the one Ray assigned.

Ray's assignment is the earliest moment to bind, so the worker binds there. Some
frameworks then drive another GPU: vLLM's Ray executors make each worker drive
``sorted(GPU ids of the engine's workers on the node)[local_rank]``, which is not
the worker's own GPU when bundles are listed out of order or a worker holds two.
The device a process drives is the one it selects through torch's public API:
``torch.cuda.set_device``, ``torch.accelerator.set_device_index`` and the
``torch.cuda.device`` / ``torch.accelerator.device_index`` context managers.

This module wraps those when ``torch.cuda`` / ``torch.accelerator`` finish importing
(a ``sys.meta_path`` hook: torch is never imported here, and a process that never
imports torch pays one dict lookup per import until the hook removes itself). A Ray
worker installs it at its first GPU assignment, after Ray's own imports and before
the actor's or task's code runs, since each lookup is a Python call (installed at the
bootstrap, the ~2000 imports of a worker's start cost ~4.5 M instructions). The
selected index is mapped through the process's *current* ``CUDA_VISIBLE_DEVICES``
(vLLM <= 0.23 rewrites it after start; unset means CUDA's own order) to the GPU id
the node knows, and :meth:`Binder.follow` rebinds when that moves the binding.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any, Callable, Dict, Optional

from . import environment

_WRAPPED = "_ray_numa_follows"
_lock = threading.Lock()   # threads selecting at once extend one union, in turn


def _selected(index_of: Callable[[], Optional[int]]) -> None:
    """Called after torch accepted a device selection; never breaks the caller."""
    # imported here, not at the top: the worker bootstrap installs this hook and its
    # imports before default_worker.py must stay cheap (binding pulls in psutil etc.)
    from .apply import BindError
    from .binding import process_binder
    from .cuda_ids import visible_entry
    try:
        index = index_of()
        if index is None or index < 0:       # torch: a negative index is a no-op
            return
        entry = visible_entry(index, os.environ.get("CUDA_VISIBLE_DEVICES"))
        with _lock:
            process_binder().follow(entry)
    except BindError:
        raise                                # strict: the task's own error
    except Exception as exc:
        environment.warn_once(f"not following the selected CUDA device: "
                              f"{type(exc).__name__}: {exc}")


def _wrap_function(module: Any, name: str, index_of: Callable[..., Optional[int]]) -> None:
    original = getattr(module, name, None)
    if original is None or getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        _selected(lambda: index_of(*args, **kwargs))
        return result

    setattr(wrapper, _WRAPPED, True)
    setattr(module, name, wrapper)


def _wrap_enter(cls: Any, index_of: Callable[[Any], Optional[int]]) -> None:
    """Wrap a device context manager's ``__enter__`` in place (isinstance keeps working)."""
    original = getattr(cls, "__enter__", None)
    if original is None or getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def __enter__(self: Any) -> Any:
        result = original(self)
        _selected(lambda: index_of(self))
        return result

    setattr(__enter__, _WRAPPED, True)
    cls.__enter__ = __enter__


def patch_cuda(cuda: Any) -> None:
    """``torch.cuda.set_device`` and ``torch.cuda.device`` (``device_of`` inherits)."""
    # torch.cuda's own resolver, the one set_device just used (int, str, torch.device)
    _wrap_function(cuda, "set_device", lambda device: cuda._get_device_index(device))
    _wrap_enter(cuda.device, lambda manager: manager.idx)


def patch_accelerator(accelerator: Any) -> None:
    """``torch.accelerator.set_device_index`` (and its deprecated alias) and
    ``torch.accelerator.device_index``, when the accelerator is CUDA."""
    def is_cuda() -> bool:
        current = accelerator.current_accelerator()
        return current is not None and current.type == "cuda"

    def index_of(device: Any) -> Optional[int]:
        return accelerator._get_device_index(device) if is_cuda() else None

    for name in ("set_device_index", "set_device_idx"):
        _wrap_function(accelerator, name, index_of)
    manager = getattr(accelerator, "device_index", None)    # torch >= 2.8 only
    if manager is not None:
        _wrap_enter(manager, lambda m: m.idx if is_cuda() else None)


_PATCHES: Dict[str, Callable[[Any], None]] = {
    "torch.cuda": patch_cuda, "torch.accelerator": patch_accelerator}


class _PatchingLoader:
    """Runs the real loader, then patches the module before anyone else sees it."""

    def __init__(self, loader: Any, patch: Callable[[Any], None]) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader   # leave no trace
        self._loader.exec_module(module)
        _patch_loaded(module.__name__)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class TorchImportHook:
    """A meta-path finder that only answers for ``torch.cuda`` and ``torch.accelerator``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        patch = _PATCHES.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None


_hook = TorchImportHook()


def _patch_loaded(name: str) -> None:
    module = sys.modules.get(name)
    if module is not None and name in _PATCHES:
        try:
            _PATCHES[name](module)
        except Exception as exc:   # a torch whose API moved: run unfollowed, say so
            environment.warn_once(f"cannot follow CUDA device selection in {name} "
                                  f"({type(exc).__name__}: {exc}); binding stays as assigned")
    if all(n in sys.modules for n in _PATCHES) and _hook in sys.meta_path:
        sys.meta_path.remove(_hook)          # both patched: cost nothing from now on


def install() -> None:
    """Follow device selection in this process: now if torch is loaded, else on import."""
    for name in _PATCHES:
        if name in sys.modules:
            _patch_loaded(name)
    if not all(n in sys.modules for n in _PATCHES) and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
