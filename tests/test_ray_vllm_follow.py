"""Ray workers end bound to the GPU they drive: vLLM's Ray executors, Ray Train, pools.

A real local Ray cluster with 8 fake GPUs seen as a DGX H100 (GPUs 0-3 on node 0,
4-7 on node 1) and job-level ``numa_bind: auto``. The workers import the torch
stand-in (``tests/standins/torchlib``); each binding's recorded calls show the bind
at assignment and, only where the driven GPU sits on the other node, one rebind.
"""
import glob
import os
import time

import pytest

from conftest import ray_cluster
from tests.inspect_proc import inspect
from tests.standins import vllm_ray_executor
from tests.test_follow import TORCHLIB, calls_for

pytestmark = pytest.mark.ray
NODE_CPUS = {0: "0-55,112-167", 1: "56-111,168-223"}


def node_of(gpus) -> int:
    nodes = {0 if int(g) < 4 else 1 for g in gpus}
    assert len(nodes) == 1, gpus
    return nodes.pop()


@pytest.fixture(scope="module")
def ray(machine_tree):
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TORCHLIB, saved) if p)
    try:
        with ray_cluster(fixture_root=machine_tree("dgx-h100"), num_gpus=8,
                         job_runtime_env={"numa_bind": "auto"}) as ray:
            yield ray
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def check_follows(report, driven: str) -> bool:
    """``report``'s worker ends bound to ``driven``'s node; True if it was rebound."""
    b = report["binding"]
    assigned = b["history"][0]["gpus"] if b["history"] else b["gpus"]
    assert assigned == report["gpu_ids"], (assigned, report["gpu_ids"])
    assert b["status"] == "bound" and b["cpus"] == NODE_CPUS[node_of([driven])]
    assert b["mem_nodes"] == [node_of([driven])]
    calls = [list(c) for c in b["calls"]]
    moved = node_of(assigned) != node_of([driven])
    assert calls == calls_for(node_of(assigned)) + (calls_for(node_of([driven])) if moved
                                                    else [])
    if assigned != [driven]:
        assert b["gpu_rule"] == "followed device" and b["gpus"] == [driven]
        assert [h["gpu_rule"] for h in b["history"]] == ["assigned"]
    else:
        assert b["gpu_rule"] == "assigned" and b["history"] == []
    return moved


def rebind_lines(ray, pid: int):
    """The worker's ``[ray_numa]`` rebind lines, from its own log files."""
    pattern = os.path.join(ray._private.worker._global_node.get_logs_dir_path(),
                           f"worker-*-{pid}.*")
    for _ in range(20):                   # the log monitor flushes asynchronously
        lines = [line.strip() for path in glob.glob(pattern)
                 for line in open(path, errors="replace") if "rebound from" in line]
        if lines:
            return lines
        time.sleep(0.5)
    return []


REVERSED = [7, 6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("bundles", [None, REVERSED], ids=["bundle order", "reversed"])
def test_ray_executor_v2_workers_follow_set_device_index(ray, bundles):
    pg, workers, devices = vllm_ray_executor.start_workers_v2(8, bundle_indices=bundles)
    with vllm_ray_executor.stopping(pg, workers):
        reports = ray.get([w.inspect.remote() for w in workers], timeout=300)
    assert sorted(d for d in devices) == [f"cuda:{i}" for i in range(8)]
    moved = []
    for r, device in zip(reports, devices):
        assert r["noset"] == "1" and r["cuda_visible_devices"] is None
        moved.append(check_follows(r, device.split(":")[1]))
        if moved[-1]:
            [line] = rebind_lines(ray, r["pid"])
            assert "[ray_numa] INFO" in line and (
                f"from GPU {r['gpu_ids'][0]} to GPU {device.split(':')[1]}, "
                "the followed device" in line), line
    # Ray gives bundles GPUs in bundle order, so reversed ranks drive the mirror GPU
    assert any(moved) == (bundles is not None), (devices, [r["gpu_ids"] for r in reports])


def test_ray_executor_v2_two_gpus_per_worker(ray):
    pg, workers, devices = vllm_ray_executor.start_workers_v2(4, per_worker_gpus=2)
    with vllm_ray_executor.stopping(pg, workers):
        reports = ray.get([w.inspect.remote() for w in workers], timeout=300)
    assert [len(r["gpu_ids"]) for r in reports] == [2] * 4
    moved = [check_follows(r, d.split(":")[1]) for r, d in zip(reports, devices)]
    # worker k holds two GPUs but drives sorted(all)[k]: those on node 1 drive node 0's
    assert sum(moved) == 2, (devices, [r["gpu_ids"] for r in reports])


def test_ray_distributed_executor_rewrites_visible_devices_and_is_followed(ray):
    pg, workers = vllm_ray_executor.start_workers(8, bundle_indices=REVERSED,
                                                  init_device=True)
    with vllm_ray_executor.stopping(pg, workers):
        reports = ray.get([w.inspect.remote() for w in workers], timeout=300)
    moved = []
    for local_rank, r in enumerate(reports):      # one node: rank == local rank
        assert r["cuda_visible_devices"] == "0,1,2,3,4,5,6,7"
        moved.append(check_follows(r, str(local_rank)))     # cuda:<local_rank>
    assert all(moved), [r["gpu_ids"] for r in reports]


class TrainWorker:
    """Ray Train's device choice, transcribed from Ray 2.60: the backend executor's
    ``_share_cuda_visible_devices`` (``train/_internal/backend_executor.py``) gives every
    worker the node's sorted GPU ids, ``CUDATorchDeviceManager.get_devices``
    (``air/_internal/device_manager/nvidia_gpu.py``) takes the index of the worker's own
    id in that list, and ``TorchConfigContextManager.__enter__``
    (``train/torch/config.py``) calls ``torch.cuda.set_device(device)``. (The real
    modules import ``torch.distributed``, which the stand-in does not provide.)"""

    def gpu_ids(self):
        return [str(i) for i in ray_module().get_gpu_ids()]

    def share(self, all_ids: str) -> None:
        os.environ["CUDA_VISIBLE_DEVICES"] = all_ids

    def set_device(self):
        import torch
        gpu_ids = [str(id) for id in ray_module().get_gpu_ids()]
        cuda_visible_list = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        device = torch.device(f"cuda:{cuda_visible_list.index(gpu_ids[0])}")
        torch.cuda.set_device(device)
        return inspect(gpu_ids=gpu_ids)


def ray_module():
    import ray
    return ray


def test_ray_train_device_choice_keeps_the_assigned_gpu(ray):
    workers = [ray.remote(num_gpus=1, num_cpus=0)(TrainWorker).remote() for _ in range(4)]
    with vllm_ray_executor.stopping(None, workers):
        ids = ray.get([w.gpu_ids.remote() for w in workers], timeout=300)
        shared = ",".join(sorted(g for gpus in ids for g in gpus))
        ray.get([w.share.remote(shared) for w in workers], timeout=60)
        reports = ray.get([w.set_device.remote() for w in workers], timeout=120)
    for r in reports:
        assert r["cuda_visible_devices"] == shared
        assert not check_follows(r, r["gpu_ids"][0])    # no rebind, no history


class Predictor:
    """A GPU UDF as Ray Data's actor pool runs it: ``__init__`` once per actor, then
    ``__call__`` per batch; it selects ``cuda:0`` (``torch.cuda.set_device``) and enters
    ``torch.cuda.device(0)`` per batch, as Hugging Face pipelines do."""

    def __init__(self):
        import torch
        torch.cuda.set_device(torch.device("cuda:0"))

    def __call__(self, batch):
        import torch
        with torch.cuda.device(0):
            return inspect(gpu_ids=[str(g) for g in ray_module().get_gpu_ids()],
                           batch=batch)


def test_gpu_actor_pool_keeps_the_assigned_gpu(ray):
    # Ray Data (not importable here: it needs pandas) runs a GPU map_batches UDF in an
    # actor pool of ``num_gpus=1`` actors; ray.util.ActorPool is the same shape.
    from ray.util import ActorPool
    actors = [ray.remote(num_gpus=1, num_cpus=0)(Predictor).remote() for _ in range(2)]
    with vllm_ray_executor.stopping(None, actors):
        reports = list(ActorPool(actors).map(lambda a, b: a.__call__.remote(b), range(6)))
    assert sorted(r["batch"] for r in reports) == list(range(6))
    assert len({r["pid"] for r in reports}) == 2
    for r in reports:
        assert not check_follows(r, r["gpu_ids"][0])
