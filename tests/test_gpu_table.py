"""The node's GPU table: resolved once by the runtime-env agent, NVML in workers only
as a fallback.

NVML initializations are counted by the fake NVML itself (one pid per ``nvmlInit``
in ``RAY_NUMA_FAKE_NVML_LOG``), in this process, in the agent and in every worker.
"""
import asyncio
import json
import logging
import os
import shutil

import pytest

from conftest import ray_cluster
from ray_numa import environment, gpu_table, gpus
from ray_numa.plugin import NumaBindPlugin


@pytest.fixture
def nvml_log(tmp_path, monkeypatch):
    """``inits()`` -> pids of every nvmlInit since the test started, in order."""
    log = tmp_path / "nvml-inits"
    log.write_text("")
    monkeypatch.setenv(environment.FAKE_NVML_LOG_ENV, str(log))
    return lambda: [int(p) for p in log.read_text().split()]


@pytest.fixture
def mig_machine(on_machine, monkeypatch):
    """DGX A100 with MIG devices; the table the agent would hand over, in our env."""
    root = on_machine("dgx-a100-mig")
    table = gpu_table.for_agent()
    gpus._discover.cache_clear()
    monkeypatch.setenv(environment.GPU_TABLE_ENV, table)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return root, table


def test_table_round_trips_every_gpu_field(on_machine):
    on_machine("dgx-a100-mig")
    found, source = gpus.discover_gpus()
    assert any(g.mig_uuids for g in found)         # tuples of strings survive
    back, back_source, fixture = gpu_table.decode(gpu_table.encode(found, source))
    assert back == found and back_source == source + gpu_table.VIA_AGENT
    assert fixture == os.environ[environment.FIXTURE_ENV]
    # JSON has no tuples: each field comes back as the type it left as
    assert [[type(v) for v in g] for g in back] == [[type(v) for v in g] for g in found]


def test_worker_with_the_table_never_initializes_nvml(mig_machine, nvml_log, monkeypatch):
    _, table = mig_machine
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", json.loads(table)["gpus"][0]["mig_uuids"][1])
    found, source = gpu_table.node_gpus()
    assert source == "nvml" + gpu_table.VIA_AGENT
    assert len(found) == 8 and found[5].mig_uuids
    assert nvml_log() == []


@pytest.mark.parametrize("case", ["other fixture", "stale MIG id", "unreadable", "old version"])
def test_worker_falls_back_to_nvml(case, mig_machine, nvml_log, monkeypatch, tmp_path):
    root, table = mig_machine
    if case == "other fixture":     # e.g. a runtime_env's env_vars point elsewhere
        other = shutil.copytree(root, tmp_path / "copy")
        monkeypatch.setenv(environment.FIXTURE_ENV, str(other))
    elif case == "stale MIG id":    # MIG layout changed after the agent read it
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-00000000-0000-0000-0000-000000000999")
    elif case == "unreadable":
        monkeypatch.setenv(environment.GPU_TABLE_ENV, table[:40])
    else:
        monkeypatch.setenv(environment.GPU_TABLE_ENV, table.replace('"version":1', '"version":0'))
    found, source = gpu_table.node_gpus()
    assert source == "nvml" and len(found) == 8
    assert nvml_log() == [os.getpid()]


def _agent_create(plugin, runtime_env):
    from ray._private.runtime_env.context import RuntimeEnvContext
    from ray.runtime_env import RuntimeEnv
    env, context = RuntimeEnv(**runtime_env), RuntimeEnvContext()
    # the agent hands plugins its own logger; this one propagates to caplog whatever
    # an earlier test did to the "ray_numa" logger
    logger = logging.getLogger("tests.runtime_env_agent")
    asyncio.run(plugin.create(None, env, context, logger))
    plugin.modify_context([], env, context, logger)
    return context.env_vars


def test_agent_resolves_the_table_once_and_only_auto_workers_get_it(on_machine, nvml_log):
    on_machine("dgx-h100")
    plugin = NumaBindPlugin()
    first = _agent_create(plugin, {"numa_bind": "auto", "env_vars": {"A": "1"}})
    second = _agent_create(plugin, {"numa_bind": {"memory": "preferred"}})
    explicit = _agent_create(plugin, {"numa_bind": 1})
    assert nvml_log() == [os.getpid()]          # one nvmlInit for the node
    assert first[environment.GPU_TABLE_ENV] == second[environment.GPU_TABLE_ENV]
    assert len(gpu_table.decode(first[environment.GPU_TABLE_ENV])[0]) == 8
    assert environment.GPU_TABLE_ENV not in explicit


def test_agent_that_cannot_read_gpus_warns_and_workers_ask_nvml(on_machine, monkeypatch,
                                                                caplog):
    on_machine("dgx-h100")

    def broken():
        raise OSError("nvml.json: permission denied")
    monkeypatch.setattr(gpu_table, "discover_gpus", broken)
    with caplog.at_level(logging.WARNING):
        env_vars = _agent_create(NumaBindPlugin(), {"numa_bind": "auto"})
    assert environment.GPU_TABLE_ENV not in env_vars
    assert environment.SPEC_ENV in env_vars          # the worker still binds
    assert "workers will ask NVML themselves" in caplog.text


@pytest.mark.ray
def test_dgx_workers_bind_without_nvml(machine_tree, tmp_path, monkeypatch):
    """8 GPU actors on the DGX H100 fixture: NVML initialized once (the agent), by no
    worker; an actor pointed at another fixture falls back to NVML, once."""
    log = tmp_path / "nvml-inits"
    log.write_text("")
    monkeypatch.setenv(environment.FAKE_NVML_LOG_ENV, str(log))
    other = shutil.copytree(machine_tree("dgx-h100"), tmp_path / "other-dgx")
    with ray_cluster(fixture_root=machine_tree("dgx-h100"), num_gpus=8) as ray:
        @ray.remote(num_gpus=1, runtime_env={"numa_bind": "auto"})
        class Model:
            def report(self):
                from ray_numa import current_binding
                return os.getpid(), current_binding().status, current_binding().cpus

        actors = [Model.remote() for _ in range(7)]
        odd = Model.options(runtime_env={"numa_bind": "auto", "env_vars": {
            environment.FIXTURE_ENV: str(other)}}).remote()
        reports = ray.get([a.report.remote() for a in actors], timeout=300)
        odd_pid, odd_status, _ = ray.get(odd.report.remote(), timeout=300)
    inits = [int(p) for p in log.read_text().split()]
    workers = {pid for pid, _, _ in reports}
    assert {status for _, status, _ in reports} == {"bound"} and odd_status == "bound"
    assert {cpus for _, _, cpus in reports} <= {"0-55,112-167", "56-111,168-223"}
    assert not workers & set(inits), "a worker initialized NVML despite the table"
    assert inits.count(odd_pid) == 1
    assert len([p for p in inits if p != odd_pid]) == 1     # the agent, once
