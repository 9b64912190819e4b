"""Job-level ``ray.init(runtime_env={"numa_bind": "auto"})`` on a DGX H100 fixture.

This is how vLLM-on-Ray (and any library that creates its own actors) gets bound:
the user only controls the job's runtime_env. GPU actors in placement groups bind
to their own GPU's node; CPU-only actors and tasks are left alone, silently.
"""
import glob
import os

import pytest

from conftest import ray_cluster
from tests.inspect_proc import inspect
from tests.standins import vllm_ray_executor

pytestmark = pytest.mark.ray
NODE_CPUS = {0: "0-55,112-167", 1: "56-111,168-223"}


def node_of(gpu: str) -> int:
    return 0 if int(gpu) < 4 else 1


@pytest.fixture(scope="module")
def ray(machine_tree):
    with ray_cluster(fixture_root=machine_tree("dgx-h100"), num_gpus=8,
                     job_runtime_env={"numa_bind": "auto"}) as ray:
        yield ray


def test_vllm_style_placement_group_workers_bind_to_their_own_gpus(ray):
    pg, workers = vllm_ray_executor.start_workers(world_size=8)
    reports = ray.get([w.inspect.remote() for w in workers], timeout=300)
    assert sorted(r["gpu_ids"][0] for r in reports) == [str(i) for i in range(8)]
    for r in reports:
        gpu = r["gpu_ids"][0]
        assert r["cuda_visible_devices"] == "0,1,2,3,4,5,6,7"   # vLLM rewrote it
        assert r["binding"]["status"] == "bound" and r["binding"]["gpus"] == [gpu]
        assert r["binding"]["cpus"] == NODE_CPUS[node_of(gpu)]
    vllm_ray_executor.stop_workers(pg, workers)


def test_fractional_gpu_workers_bind_to_the_shared_gpus_node(ray):
    pg, [worker] = vllm_ray_executor.start_workers(world_size=1, gpu_memory_utilization=0.5)

    @ray.remote(num_gpus=0.5, num_cpus=0)
    class Sidecar:
        def inspect(self):
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    side = Sidecar.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=0)).remote()
    a, b = ray.get([worker.inspect.remote(), side.inspect.remote()], timeout=120)
    assert a["gpu_ids"] == b["gpu_ids"] and a["pid"] != b["pid"]     # one GPU, shared
    for r in (a, b):
        assert r["binding"]["status"] == "bound"
        assert r["binding"]["cpus"] == NODE_CPUS[node_of(r["gpu_ids"][0])]
    vllm_ray_executor.stop_workers(pg, [worker])
    ray.kill(side)


def test_cpu_only_actors_and_tasks_stay_unbound_without_warnings(ray):
    engine = ray.remote(num_cpus=1)(vllm_ray_executor.EngineCore).remote()

    @ray.remote
    def cpu_task():
        return inspect()

    for r in ray.get([engine.inspect.remote(), cpu_task.remote()], timeout=120):
        assert r["binding"]["status"] in ("unbound", "skipped"), r["binding"]
        assert r["binding"]["calls"] == []
        assert r["mempolicy"] == ["default", []]
    logs = glob.glob(os.path.join(ray._private.worker._global_node.get_logs_dir_path(),
                                  "worker-*"))
    assert logs
    warnings = [line for path in logs for line in open(path, errors="replace")
                if "[ray_numa] WARNING" in line]
    assert warnings == []


def test_cpu_only_worker_pays_nothing_for_binding(ray):
    # a fresh runtime_env: a new worker, wrapped by the plugin (job-level "auto")
    @ray.remote(runtime_env={"env_vars": {"RAY_NUMA_TEST_FRESH": "cpu-only"}})
    def modules():
        import sys
        hooks = [type(f).__name__ for f in sys.meta_path]
        return {m: m in sys.modules for m in ("ray_numa.worker", "ray_numa.binding",
                                              "ray_numa.topology", "ray_numa.follow")}, hooks

    loaded, hooks = ray.get(modules.remote(), timeout=120)
    assert loaded == {"ray_numa.worker": True, "ray_numa.binding": False,
                      "ray_numa.topology": False, "ray_numa.follow": False}
    assert "TorchImportHook" not in hooks     # no Python call on each of its imports


def test_a_gpu_actor_binds_with_the_plan_the_agent_prepared(ray):
    """Issue 11: the runtime-env agent plans every GPU of the node once; the worker
    applies its GPU's plan without reading the topology or loading the GPU code."""
    @ray.remote(num_gpus=1, runtime_env={"env_vars": {"RAY_NUMA_TEST_FRESH": "prepared"}})
    class Probe:
        def report(self):
            import os
            import sys

            import ray_numa
            return ({m: m in sys.modules for m in ("ray_numa.topology", "ray_numa.gpus",
                                                   "ray_numa.gpu_table")},
                    ray_numa.current_binding().as_dict(), "RAY_NUMA_PLANS" in os.environ)

    loaded, binding, handed = ray.get(Probe.remote().report.remote(), timeout=120)
    assert handed and loaded == {"ray_numa.topology": False, "ray_numa.gpus": False,
                                 "ray_numa.gpu_table": False}
    gpu = binding["gpus"][0]
    assert binding["status"] == "bound" and binding["cpus"] == NODE_CPUS[node_of(gpu)]
    assert binding["gpu_rule"] == "assigned" and binding["mem_nodes"] == (node_of(gpu),)


@pytest.mark.parametrize("span,cpus", [("union", "0-223"), ("first", None), ("skip", "")])
def test_two_gpu_actor_across_nodes_follows_span(ray, span, cpus):
    @ray.remote(num_gpus=1)
    class Holder:
        def gpu(self):
            return int(ray.get_gpu_ids()[0])

    holders = [Holder.remote() for _ in range(8)]
    held = ray.get([h.gpu.remote() for h in holders], timeout=120)
    for h, g in zip(holders, held):       # free exactly GPUs 0 and 4
        if g in (0, 4):
            ray.kill(h)

    @ray.remote(num_gpus=2, runtime_env={"numa_bind": {"span": span}})
    class Pair:
        def inspect(self):
            return inspect(gpu_ids=sorted(str(g) for g in ray.get_gpu_ids()))

    r = ray.get(Pair.remote().inspect.remote(), timeout=120)
    assert r["gpu_ids"] == ["0", "4"]
    b = r["binding"]
    if span == "skip":
        assert b["status"] == "skipped" and "span NUMA nodes 0-1" in b["reason"]
    else:
        first = NODE_CPUS[node_of(b["gpus"][0])]
        assert b["status"] == "bound" and b["cpus"] == (cpus or first)
        assert b["mem_nodes"] == ([0, 1] if span == "union" else [node_of(b["gpus"][0])])
    for h in holders:
        ray.kill(h)


def test_off_on_an_actor_overrides_the_job_level_auto(ray):
    @ray.remote(num_gpus=1, runtime_env={"numa_bind": "off"})
    class Free:
        def inspect(self):
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    r = ray.get(Free.remote().inspect.remote(), timeout=120)
    assert r["gpu_ids"] and r["binding"]["status"] == "unbound"
    assert r["binding"]["calls"] == [] and "plugin" not in r["binding"]["reason"]
