"""How vLLM's Ray executor creates its GPU workers, reduced to the Ray calls.

vLLM (``vllm/executor/ray_distributed_executor.py``) makes a placement group of
``{"GPU": 1}`` bundles, starts one ``RayWorkerWrapper`` actor per bundle with
``PlacementGroupSchedulingStrategy`` and ``num_cpus=0`` (``num_gpus`` is
``gpu_memory_utilization``, fractional, when tensor parallelism is 1), then rewrites
every worker's ``CUDA_VISIBLE_DEVICES`` to all GPUs of its node. The user cannot
pass these actors a runtime_env: only the job-level one reaches them.
"""
from __future__ import annotations

from typing import List

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tests.inspect_proc import inspect


class RayWorkerWrapper:
    def get_node_and_gpu_ids(self):
        return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]

    def update_environment_variables(self, env: dict) -> None:
        import os
        os.environ.update(env)

    def inspect(self):
        return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])


class EngineCore:
    """The CPU-only engine/driver side actor."""

    def inspect(self):
        return inspect()


def start_workers(world_size: int, gpu_memory_utilization: float = 0.9):
    """Start the workers as vLLM does; returns (placement group, workers)."""
    pg = placement_group([{"GPU": 1, "CPU": 0}] * world_size, strategy="PACK")
    ray.get(pg.ready(), timeout=120)
    num_gpus = gpu_memory_utilization if world_size == 1 else 1
    workers = []
    for bundle in range(world_size):
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_capture_child_tasks=True,
            placement_group_bundle_index=bundle)
        workers.append(ray.remote(num_cpus=0, num_gpus=num_gpus,
                                  scheduling_strategy=strategy)(RayWorkerWrapper).remote())
    ids = ray.get([w.get_node_and_gpu_ids.remote() for w in workers], timeout=300)
    all_gpus = ",".join(sorted({g for _, gpus in ids for g in gpus}, key=int))
    ray.get([w.update_environment_variables.remote({"CUDA_VISIBLE_DEVICES": all_gpus})
             for w in workers], timeout=60)
    return pg, workers


def stop_workers(pg, workers: List) -> None:
    for w in workers:
        ray.kill(w)
    remove_placement_group(pg)
