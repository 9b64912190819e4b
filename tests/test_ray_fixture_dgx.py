"""A real local Ray cluster with 8 fake GPUs, seen as a DGX H100 through a fixture.

The workers resolve their GPU through the fixture's NVML and sysfs and compute the
plan for that machine; since its CPUs do not exist here, the recording backend
captures the exact calls instead of making them. Each actor/replica reports what it
computed for the GPU Ray really gave it.
"""
import pytest

from conftest import ray_cluster
from ray_numa.planning import plan_for
from ray_numa.options import parse
from ray_numa.topology import format_cpulist
from tests.inspect_proc import inspect

pytestmark = pytest.mark.ray
NODE_CPUS = {0: "0-55,112-167", 1: "56-111,168-223"}


@pytest.fixture(scope="module")
def ray(machine_tree):
    with ray_cluster(fixture_root=machine_tree("dgx-h100"), num_gpus=8) as ray:
        yield ray


def expected_calls(gpu: str, memory: str = "bind"):
    node = 0 if int(gpu) < 4 else 1
    return [["sched_setaffinity", "all-threads", NODE_CPUS[node]],
            ["set_mempolicy", memory, "" if memory == "local" else str(node)],
            ["mbind_move", str(1 - node), str(node)]]


def test_eight_actors_each_bind_to_their_gpus_node(ray):
    @ray.remote(num_gpus=1, runtime_env={"numa_bind": "auto"})
    class Model:
        def inspect(self):
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    actors = [Model.remote() for _ in range(8)]
    reports = ray.get([a.inspect.remote() for a in actors], timeout=300)
    assert sorted(r["gpu_ids"][0] for r in reports) == [str(i) for i in range(8)]
    for r in reports:
        gpu = r["gpu_ids"][0]
        plan = plan_for(parse("auto"), [gpu])
        b = r["binding"]
        assert b["status"] == "bound" and b["backend"] == "record"
        assert b["gpus"] == [gpu] and r["cuda_visible_devices"] == gpu
        assert b["cpus"] == format_cpulist(plan.cpus) == NODE_CPUS[plan.cpu_nodes[0]]
        assert b["mem_nodes"] == list(plan.mem_nodes) and b["memory"] == "bind"
        assert [list(c) for c in b["calls"]] == expected_calls(gpu)
    for a in actors:
        ray.kill(a)


def test_pooled_task_worker_is_rebound_for_another_gpu(ray):
    # GPU tasks default to max_calls=1 (a fresh worker each); pooling is opt-in.
    @ray.remote(num_gpus=1, max_calls=0, runtime_env={"numa_bind": "auto"})
    def gpu_task():
        return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    @ray.remote(num_gpus=1)
    class Holder:
        def gpu(self):
            return int(ray.get_gpu_ids()[0])

    first = ray.get(gpu_task.remote(), timeout=120)
    n1 = 0 if int(first["gpu_ids"][0]) < 4 else 1
    # hold every GPU of the first task's node, so the next task lands on the other
    holders = [Holder.remote() for _ in range(8)]
    held = ray.get([h.gpu.remote() for h in holders], timeout=120)
    for h, g in zip(holders, held):
        if (0 if g < 4 else 1) != n1:
            ray.kill(h)
    second = ray.get(gpu_task.remote(), timeout=120)
    assert first["pid"] == second["pid"], "the task worker was not reused"
    n2 = 0 if int(second["gpu_ids"][0]) < 4 else 1
    assert n1 != n2
    assert first["binding"]["cpus"] == NODE_CPUS[n1]
    assert second["binding"]["cpus"] == NODE_CPUS[n2]
    # memory policy is per thread: a pooled worker allocates "local" and lets the
    # affinity (set on every thread) steer it, so a rebind reaches every thread
    assert second["binding"]["memory"] == "local" and second["binding"]["mem_nodes"] == [n2]
    assert any("pooled task worker" in n for n in second["binding"]["notes"])
    calls = [list(c) for c in second["binding"]["calls"]]
    assert calls == (expected_calls(first["gpu_ids"][0], "local")
                     + expected_calls(second["gpu_ids"][0], "local"))
    for h in holders:
        ray.kill(h)


def test_serve_replicas_bind_to_their_gpus(ray):
    from ray import serve

    @serve.deployment(num_replicas=2, ray_actor_options={
        "num_gpus": 1, "num_cpus": 0, "runtime_env": {"numa_bind": "auto"}})
    class Embedder:
        def __call__(self):
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    try:
        handle = serve.run(Embedder.bind(), name="numa", route_prefix=None)
        seen = {}
        for _ in range(60):
            r = handle.remote().result(timeout_s=120)
            seen[r["pid"]] = r
            if len(seen) == 2:
                break
        assert len(seen) == 2, "both replicas should answer"
        for r in seen.values():
            gpu = r["gpu_ids"][0]
            assert r["binding"]["status"] == "bound" and r["binding"]["gpus"] == [gpu]
            assert r["binding"]["cpus"] == NODE_CPUS[0 if int(gpu) < 4 else 1]
    finally:
        serve.shutdown()
