"""Shared fixtures: fixture machines on disk, and real local Ray clusters.

Fixture trees are generated from ``tests/fixtures/machines.py`` into
``tests/fixtures/trees/`` (git-ignored) once per session.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures.build import build
from tests.fixtures.machines import MACHINES

TREES = Path(__file__).parent / "tests" / "fixtures" / "trees"


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
    """``on_machine(name)`` points ray-numa at a fixture machine for this test."""
    from ray_numa import gpus, topology, binding

    def use(name: str) -> Path:
        root = machine_tree(name)
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
