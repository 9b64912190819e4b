"""ray-numa: NUMA-aware CPU and memory binding for GPU work on Ray.

``runtime_env={"numa_bind": "auto"}`` pins a Ray worker to the CPUs and memory of
the NUMA node nearest the GPU(s) Ray assigned it. See README.md.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .binding import Binding


__version__ = "0.1.0"

__all__ = ["Binding", "BindOptions", "OptionsError", "current_binding",
           "parse_options", "register", "plugin_env", "bind_current_process",
           "check_cluster"]


_LAZY = {"Binding": "binding", "current_binding": "binding", "BindOptions": "options",
         "OptionsError": "options", "parse_options": "options"}


def __getattr__(name: str) -> Any:
    # Loaded on first use: the worker bootstrap imports this package before every Ray
    # worker starts, and only the worker's own case should pay for its imports.
    if name in _LAZY:
        import importlib
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, "parse" if name == "parse_options" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register(environ: Any = None) -> None:
    """Enable the ``numa_bind`` plugin for Ray started from this process."""
    from .plugin import register as _register
    _register(environ)


def plugin_env() -> dict:
    """The environment variables that enable the plugin (for ``ray start``)."""
    from .plugin import plugin_env as _plugin_env
    return _plugin_env()


def bind_current_process(*args: Any, **kwargs: Any) -> Binding:
    """Bind this (non-Ray-worker) process; see :func:`ray_numa.launcher.bind_current_process`."""
    from .launcher import bind_current_process as _bind
    return _bind(*args, **kwargs)


def check_cluster(timeout: float = 120) -> dict:
    """Raise unless every alive node of the connected cluster runs the plugin."""
    from .cluster import check_cluster as _check
    return _check(timeout)
