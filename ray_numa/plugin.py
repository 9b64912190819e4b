"""The Ray runtime-env plugin ``numa_bind``.

What Ray 2.60 allows (``_private/runtime_env/agent/runtime_env_agent.py``,
``context.py``): the agent runs ``create`` then ``modify_context`` once per distinct
serialized runtime_env and caches the resulting context, before any GPU is assigned;
the worker is then started as ``bash -c "<command_prefix> exec <py_executable>
default_worker.py …"``. So the plugin can only shape how the worker starts: it puts
the ray-numa bootstrap after the interpreter (and, for an explicit node, ``numactl``
before it) and passes the options in ``RAY_NUMA_SPEC``. Custom plugins are loaded
before Ray's own, and sorting by priority is stable, so priority 90 makes this one
run after pip/uv/conda/py_executable (priority 10) and wrap whatever interpreter
they chose.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shlex
from pathlib import Path
from typing import Dict, List, Optional

from . import environment

try:
    from ray._private.runtime_env.plugin import RuntimeEnvPlugin
except ImportError as _exc:   # pragma: no cover - another Ray
    raise ImportError(environment.ray_hook_missing(
        "ray._private.runtime_env.plugin.RuntimeEnvPlugin",
        "as the base of its runtime-env plugin")) from _exc

from . import prepared
from .apply import BindError, numactl_argv, probe_numactl
from .planning import plan_for
from .gpu_table import for_agent as node_gpu_table
from .options import BindOptions, parse
from .decision import Skip

BOOT_SCRIPT = str(Path(__file__).parent / "_boot" / "boot.py")
PRIORITY = 90

default_logger = logging.getLogger(__name__)


class NumaBindPlugin(RuntimeEnvPlugin):
    name = "numa_bind"
    priority = PRIORITY

    def __init__(self) -> None:
        environment.warn_if_untested_ray()      # once per node, in the agent's log
        self._prefixes: Dict[str, List[str]] = {}
        #: this node's encoded GPU table for "auto" workers, resolved by the first create
        self._gpu_table: Optional["asyncio.Future[str]"] = None
        #: "auto" options (JSON) -> the plans for this node's GPU ids (prepared.py)
        self._plans: Dict[str, "asyncio.Future[str]"] = {}

    @staticmethod
    def validate(runtime_env_dict: dict) -> None:
        parse(runtime_env_dict.get(NumaBindPlugin.name))

    async def create(self, uri: Optional[str], runtime_env, context,
                     logger: logging.Logger = default_logger) -> float:
        options = parse(runtime_env.get(self.name))
        if (options.enabled and not options.auto
                and not environment.disabled(runtime_env.env_vars())):
            # numactl probes are subprocesses: keep them off the agent's event loop.
            loop = asyncio.get_running_loop()
            self._prefixes[options.to_json()] = await loop.run_in_executor(
                None, _numactl_prefix, options, logger)
        if options.enabled and options.auto:
            # NVML once per node (this agent), off the event loop; concurrent creates
            # share the one resolution. See gpu_table.py.
            loop = asyncio.get_running_loop()
            if self._gpu_table is None:
                self._gpu_table = loop.run_in_executor(None, _node_gpu_table, logger)
            await self._gpu_table
            key = options.to_json()
            if key not in self._plans:
                self._plans[key] = loop.run_in_executor(None, _node_plans, options, logger)
            await self._plans[key]
        return 0

    def modify_context(self, uris: List[str], runtime_env, context,
                       logger: logging.Logger = default_logger) -> None:
        options = parse(runtime_env.get(self.name))
        if not options.enabled:
            return
        if runtime_env.get("image_uri") or runtime_env.get("container"):
            # the worker runs in an image where this file's path means nothing
            logger.warning("numa_bind: not binding a containerized worker; run "
                           "`ray-numa exec` or bind_current_process() inside the image")
            return
        disabled = environment.disabled(runtime_env.env_vars())
        argv = [] if disabled else self._prefixes.get(options.to_json(), [])
        context.env_vars[environment.SPEC_ENV] = options.to_json()
        context.env_vars[environment.PREFIX_ENV] = json.dumps(argv)
        if options.auto and self._gpu_table is not None and self._gpu_table.result():
            context.env_vars[environment.GPU_TABLE_ENV] = self._gpu_table.result()
        plans = self._plans.get(options.to_json()) if options.auto else None
        if plans is not None and plans.result():
            context.env_vars[environment.PLANS_ENV] = plans.result()
        prefix = "" if not argv or environment.simulated() else shlex.join(argv) + " "
        context.py_executable = (f"{prefix}{context.py_executable} "
                                 f"{shlex.quote(BOOT_SCRIPT)}")
        logger.info("numa_bind %s: worker starts as %s", options.to_json(),
                    context.py_executable)


def _numactl_prefix(options: BindOptions, logger: logging.Logger) -> List[str]:
    """numactl argv for an explicit node, [] to bind in-process in the worker."""
    decision = plan_for(options)
    if isinstance(decision, Skip):
        if options.strict:
            raise BindError(f"numa_bind (strict): {decision.message()}")
        return []        # the worker reaches the same Skip and warns in its log
    if environment.simulated():
        return numactl_argv(decision)   # recorded by the worker, never run here
    argv, memory, notes = probe_numactl(decision)
    for note in notes:
        logger.warning("numa_bind: %s", note)
    if argv is None:
        return []        # no usable numactl: the worker binds with syscalls
    if options.strict and memory != decision.memory:
        raise BindError(f"numa_bind (strict): {'; '.join(notes)}")
    return argv


def _node_gpu_table(logger: logging.Logger) -> str:
    """The node's encoded GPU table; "" (each worker asks NVML) if it cannot be read."""
    try:
        return node_gpu_table()
    except Exception as exc:   # never fail a runtime_env over an optimization
        logger.warning("numa_bind: could not resolve this node's GPU table (%s: %s); "
                       "workers will ask NVML themselves", type(exc).__name__, exc)
        return ""


def _node_plans(options: BindOptions, logger: logging.Logger) -> str:
    """This node's plans for ``options``; "" (each worker plans) if they cannot be made."""
    try:
        return prepared.for_agent(options)
    except Exception as exc:   # never fail a runtime_env over an optimization
        logger.warning("numa_bind: could not plan this node's GPUs (%s: %s); workers "
                       "will plan themselves", type(exc).__name__, exc)
        return ""


def plugin_env() -> Dict[str, str]:
    """Environment that enables the plugin for ``ray start`` / ``ray.init``."""
    environment.warn_if_untested_ray()          # `ray-numa env` and register()
    return {
        "RAY_RUNTIME_ENV_PLUGINS": json.dumps(
            [{"class": f"{__name__}.NumaBindPlugin", "priority": PRIORITY}]),
        "RAY_RUNTIME_ENV_PLUGIN_SCHEMAS": str(Path(__file__).parent / "schemas"),
    }


def register(environ=None) -> None:
    """Enable the plugin for Ray started from this process (call before ray.init).

    Keeps plugins and schema paths already configured. The driver validates
    ``numa_bind`` values against the schema from then on.
    """
    environ = os.environ if environ is None else environ
    ours = plugin_env()
    plugins = json.loads(environ.get("RAY_RUNTIME_ENV_PLUGINS") or "[]")
    if not any(p.get("class") == f"{__name__}.NumaBindPlugin" for p in plugins):
        plugins += json.loads(ours["RAY_RUNTIME_ENV_PLUGINS"])
    environ["RAY_RUNTIME_ENV_PLUGINS"] = json.dumps(plugins)
    schemas = [p for p in environ.get("RAY_RUNTIME_ENV_PLUGIN_SCHEMAS", "").split(",") if p]
    if ours["RAY_RUNTIME_ENV_PLUGIN_SCHEMAS"] not in schemas:
        schemas.append(ours["RAY_RUNTIME_ENV_PLUGIN_SCHEMAS"])
    environ["RAY_RUNTIME_ENV_PLUGIN_SCHEMAS"] = ",".join(schemas)
    try:
        from ray._private.runtime_env.plugin_schema_manager import (
            RuntimeEnvPluginSchemaManager)
        RuntimeEnvPluginSchemaManager.clear()   # reload with our schema on next validate
    except (ImportError, AttributeError):
        environment.logger().warning("%s", environment.ray_hook_missing(
            "RuntimeEnvPluginSchemaManager.clear", "to load its schema in a running driver"))
    _install_driver_validation()


def _install_driver_validation() -> None:
    """Reject bad ``numa_bind`` values on the driver, at ``.remote()``/``.options()``.

    Ray 2.60 checks plugin schemas only in ``RuntimeEnv.__setitem__``, but builds
    every task/actor runtime_env with ``RuntimeEnv(**d)``, whose ``dict.update``
    skips it; without this a bad value would only fail when the worker starts.
    """
    import inspect

    from ray.runtime_env import RuntimeEnv

    original = RuntimeEnv.__init__
    if getattr(original, "_ray_numa_validates", False):
        return
    if "_validate" not in inspect.signature(original).parameters:
        environment.logger().warning("%s", environment.ray_hook_missing(
            "RuntimeEnv.__init__(_validate=...)", "to reject bad numa_bind values at "
            ".remote(): they fail when the worker starts instead"))
        return

    @functools.wraps(original)
    def __init__(self, *args, _validate: bool = True, **kwargs):
        original(self, *args, _validate=_validate, **kwargs)
        if _validate and dict.get(self, NumaBindPlugin.name) is not None:
            parse(dict.get(self, NumaBindPlugin.name))

    __init__._ray_numa_validates = True  # type: ignore[attr-defined]
    RuntimeEnv.__init__ = __init__
