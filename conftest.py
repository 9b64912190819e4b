"""Shared fixtures: fixture machines on disk, and real local Ray clusters.

Fixture trees are generated from ``tests/fixtures/machines.py`` into
``tests/fixtures/trees/`` (git-ignored) once per session.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures.build import build
from tests.fixtures.machines import MACHINES

TREES = Path(__file__).parent / "tests" / "fixtures" / "trees"
# The in-guest tests run only inside the VM tier's guest (tests/vm/test_vm_tier.py boots
# it with RAY_NUMA_IN_VM=1); on the host they are not even collected.
collect_ignore = [] if os.environ.get("RAY_NUMA_IN_VM") == "1" else ["tests/vm/inside"]


@pytest.fixture(scope="session")
def machine_tree():
    """``machine_tree(name)`` -> path of that machine's fixture tree."""
    built = {}

    def get(name: str) -> Path:
        if name not in built:
            root = TREES / name
            shutil.rmtree(root, ignore_errors=True)
            built[name] = build(name, root)
        return built[name]

    return get


@pytest.fixture
def on_machine(machine_tree, monkeypatch):
    """``on_machine(name)`` points ray-numa at a fixture machine for this test (a name
    from ``tests/fixtures/machines.py``, or the Path of a tree such as a real dump)."""
    from ray_numa import gpus, topology, binding

    def use(name) -> Path:
        root = name if isinstance(name, Path) else machine_tree(name)
        monkeypatch.setenv("RAY_NUMA_FIXTURE", str(root))
        topology._cached_topology.cache_clear()
        gpus._discover.cache_clear()
        monkeypatch.setattr(binding, "_binder", None)
        return root

    yield use
    topology._cached_topology.cache_clear()
    gpus._discover.cache_clear()


def pytest_report_header(config):
    return [f"fixture machines: {', '.join(MACHINES)}",
            f"numactl: {shutil.which('numactl') or 'missing'}; cpus here: {os.cpu_count()}"]


@contextlib.contextmanager
def ray_cluster(fixture_root=None, job_runtime_env=None, **init_kwargs):
    """A real local Ray cluster on loopback with the plugin registered.

    ``fixture_root`` goes into ``RAY_NUMA_FIXTURE`` before ``ray.init`` so the raylet,
    the runtime-env agent and every worker inherit it.
    """
    import ray
    import ray_numa

    saved = dict(os.environ)
    # workers import the tests' helpers (tests.inspect_proc) by reference
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).parent), saved.get("PYTHONPATH")) if p)
    if fixture_root is not None:
        os.environ["RAY_NUMA_FIXTURE"] = str(fixture_root)
    ray_numa.register()
    kwargs = dict(address="local", num_cpus=16, include_dashboard=False, log_to_driver=True,
                  runtime_env=job_runtime_env)
    kwargs.update(init_kwargs)
    ray.init(**kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
