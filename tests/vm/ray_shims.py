"""Test-harness patches that let a real Ray head start inside the VM tier's TCG guest.

Under QEMU's software emulation every Python process spends tens of seconds importing
Ray, and Ray has a few waits that are hard-coded, not configurable. Each shim below
works around one of them, in the driver process only (the raylet, the agents and the
workers run Ray unchanged, and ray-numa's product code is never patched). Checked on
Ray 2.60.0. :func:`install` fails with :class:`ShimOutdated` naming the internal when a
Ray upgrade removes one, so the tier breaks loudly rather than skipping.

``GUEST_ENV`` stretches the timeouts that *are* configurable (environment variables
the raylet, GCS and workers read) and turns off background work.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from typing import Any, Dict, List

RAY_CHECKED = "2.60.0"
STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent_stub.py")
WAIT_S = 900.0          # upper bound on any one wait below; the tier's own timeout is lower

GUEST_ENV: Dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_worker_register_timeout_seconds": "900", "RAY_agent_register_timeout_ms": "900000",
    "RAY_raylet_client_num_connect_attempts": "900",
    "RAY_gcs_rpc_server_connect_timeout_s": "120",
    "RAY_gcs_rpc_server_reconnect_timeout_s": "900",
    "RAY_gcs_server_request_timeout_seconds": "900", "RAY_py_gcs_connect_timeout_s": "900",
    "RAY_NUM_REDIS_GET_RETRIES": "900", "RAY_gcs_server_port_wait_time_s": "900",
    "RAY_health_check_initial_delay_ms": "60000", "RAY_health_check_period_ms": "10000",
    "RAY_health_check_timeout_ms": "60000", "RAY_health_check_failure_threshold": "30",
    "RAY_prestart_worker_first_driver": "0", "RAY_enable_worker_prestart": "0",
    "RAY_worker_niceness": "0", "RAY_enable_metrics_collection": "0",
    "RAY_enable_timeline": "0", "RAY_task_events_report_interval_ms": "0",
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "1",
}


class ShimOutdated(RuntimeError):
    """A Ray internal a shim patches is gone: the shim needs revisiting for this Ray."""


def _require(owner: Any, name: str, where: str) -> Any:
    if not hasattr(owner, name):
        import ray
        raise ShimOutdated(f"{where}.{name} is gone in Ray {ray.__version__} (the VM tier's "
                           f"shim was checked on Ray {RAY_CHECKED}): revisit tests/vm/ray_shims.py")
    return getattr(owner, name)


def patient_raylet_registration() -> None:
    """``ray._private.node.Node`` polls ``ray._private.services.get_node`` for the new
    raylet with a hard-coded ``raylet_start_wait_time_s = 30``; under TCG the raylet
    registers later. The wrapper keeps retrying while a raylet process is alive (node.py
    looks ``services.get_node`` up as a module attribute on every try)."""
    import psutil
    from ray._private import services
    original = _require(services, "get_node", "ray._private.services")

    def raylet_alive() -> bool:
        return any(p.info["name"] == "raylet" and p.info["status"] != psutil.STATUS_ZOMBIE
                   for p in psutil.process_iter(["name", "status"]))

    def get_node(gcs_address, node_id):
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                return original(gcs_address, node_id)
            except RuntimeError:
                if time.monotonic() > deadline or not raylet_alive():
                    raise
                time.sleep(1.0)

    services.get_node = get_node


def no_head_extras() -> None:
    """``ray._private.node.Node.start_api_server`` (the dashboard head, started even with
    ``include_dashboard=False``), ``start_monitor`` (autoscaler) and ``start_log_monitor``
    are three Python processes that each import for minutes under TCG and starve the
    raylet; none is needed. ``ray._private.utils.get_dashboard_dependency_error`` is made
    to report an error so the raylet starts the dashboard agent with ``--minimal``."""
    from ray._private import node, utils

    def no_api_server(self, *, include_dashboard=None, raise_on_failure=False):
        self._webui_url = None

    for name in ("start_api_server", "start_monitor", "start_log_monitor"):
        _require(node.Node, name, "ray._private.node.Node")
    _require(utils, "get_dashboard_dependency_error", "ray._private.utils")
    node.Node.start_api_server = no_api_server
    node.Node.start_monitor = lambda self: None
    node.Node.start_log_monitor = lambda self: None
    utils.get_dashboard_dependency_error = lambda: "VM tier: minimal dashboard agent"


FIXED_PORTS = {"metrics_agent_port": 50101, "metrics_export_port": 50102,
               "runtime_env_agent_port": 50103, "dashboard_agent_listen_port": 50104}


def fixed_agent_ports() -> None:
    """The raylet waits 15 s (``WaitForPersistedPort``'s default in node_manager.cc, not
    governed by ``RAY_agent_register_timeout_ms``) for each agent to write its port
    file, then check-fails. ``ray._private.parameter.RayParams`` gets pre-selected agent
    ports, and ``ray._private.services.start_ray_process`` starts both agents through
    ``agent_stub.py``, which writes those files at once and execs the real agent."""
    import inspect

    import ray._raylet as raylet
    from ray._private import parameter, ray_constants, services
    params = inspect.signature(_require(parameter.RayParams, "__init__",
                                        "ray._private.parameter.RayParams")).parameters
    for name in FIXED_PORTS:
        if name not in params:
            _require(parameter.RayParams, name, "ray._private.parameter.RayParams")
    get_port_filename = _require(raylet, "get_port_filename", "ray._raylet")
    port_names = {"--grpc-port": _require(raylet, "METRICS_AGENT_PORT_NAME", "ray._raylet"),
                  "--listen-port": _require(raylet, "DASHBOARD_AGENT_LISTEN_PORT_NAME",
                                            "ray._raylet"),
                  "--metrics-export-port": _require(raylet, "METRICS_EXPORT_PORT_NAME",
                                                    "ray._raylet"),
                  "--runtime-env-agent-port": _require(raylet, "RUNTIME_ENV_AGENT_PORT_NAME",
                                                       "ray._raylet")}
    raylet_type = _require(ray_constants, "PROCESS_TYPE_RAYLET", "ray._private.ray_constants")
    original_init = parameter.RayParams.__init__
    original_start = _require(services, "start_ray_process", "ray._private.services")

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        for name, port in FIXED_PORTS.items():
            if not getattr(self, name, None):
                setattr(self, name, port)

    def through_stub(agent_command: str) -> str:
        args = shlex.split(agent_command)
        script = next(i for i, a in enumerate(args) if a.endswith(".py"))
        opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
        for needed in ("--session-dir", "--node-id"):
            if needed not in opts:
                raise ShimOutdated(f"a Ray agent's command has no {needed} (the VM tier's "
                                   f"shim was checked on Ray {RAY_CHECKED})")
        files = [f"{os.path.join(opts['--session-dir'], get_port_filename(opts['--node-id'], name))}"
                 f"={opts[flag]}" for flag, name in port_names.items()
                 if opts.get(flag, "0") != "0"]
        return subprocess.list2cmdline([*args[:script], STUB, *files, "--", *args[script:]])

    def start_ray_process(command: List[str], process_type, *args, **kwargs):
        if process_type == raylet_type:
            flags = ("--dashboard_agent_command=", "--runtime_env_agent_command=")
            out = [next((f + through_stub(c[len(f):]) for f in flags if c.startswith(f)), c)
                   for c in command]
            for flag in flags:
                if not any(c.startswith(flag) for c in command):
                    raise ShimOutdated(f"the raylet command has no {flag} (the VM tier's "
                                       f"shim was checked on Ray {RAY_CHECKED})")
            command = out
        return original_start(command, process_type, *args, **kwargs)

    parameter.RayParams.__init__ = init
    services.start_ray_process = start_ray_process


def install() -> None:
    """Apply every shim to this (driver) process; call before ``ray.init``."""
    missing = [k for k in GUEST_ENV if k not in os.environ]
    if missing:
        raise RuntimeError(f"the VM tier's Ray environment is not set: {missing[:3]}...")
    patient_raylet_registration()
    no_head_extras()
    fixed_agent_ports()

