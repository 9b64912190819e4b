"""How vLLM's Ray executors create their GPU workers and pick each one's device.

Read in vllm-project/vllm. Every version: a placement group of ``{"GPU": 1}`` bundles
(or one the caller made), one actor per bundle with ``PlacementGroupSchedulingStrategy``
and ``num_cpus=0`` (``num_gpus`` is ``VLLM_RAY_PER_WORKER_GPUS``, or
``gpu_memory_utilization`` when tensor parallelism is 1), bundles taken in
``VLLM_RAY_BUNDLE_INDICES`` order when set; a worker's ``local_rank`` is its position
among the node's workers in that (rank) order, and the GPU it drives is
``sorted(Ray GPU ids of the node's workers)[local_rank]``:

- <= 0.23, ``RayDistributedExecutor`` (``vllm/executor/ray_distributed_executor.py``
  ``_init_workers_ray``; ``vllm/v1/executor/ray_distributed_executor.py``):
  ``get_node_and_gpu_ids``, then ``update_environment_variables`` sets
  ``CUDA_VISIBLE_DEVICES`` to the node's sorted ids, ``init_worker`` gives
  ``local_rank = node_workers[node_id].index(rank)``, and ``init_device``
  (``vllm/v1/worker/gpu_worker.py``) does ``torch.cuda.set_device(
  torch.device(f"cuda:{local_rank}"))``;
- >= 0.24, ``RayExecutorV2`` (``vllm/v1/executor/ray_executor_v2.py``): the actors'
  runtime_env sets ``RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1`` (so Ray never sets
  ``CUDA_VISIBLE_DEVICES``), ``get_node_and_physical_gpu_ids``, then
  ``initialize_worker(local_rank, ..., assigned_physical_gpu_ids=sorted(node ids))``
  and ``init_device`` calls ``torch.accelerator.set_device_index(
  torch.device(f"cuda:{assigned_physical_gpu_ids[local_rank]}"))``.

The user cannot pass these actors a runtime_env of their own: only the job-level
one reaches them (V2 adds ``env_vars`` to it). Torch in the workers is the stand-in
of ``tests/standins/torchlib`` (put it on the workers' ``PYTHONPATH``).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from tests.inspect_proc import inspect

NOSET = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


class RayWorkerWrapper:
    """<= 0.23's worker actor."""

    def get_node_and_gpu_ids(self):
        return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]

    def update_environment_variables(self, env: dict) -> None:
        import os
        os.environ.update(env)

    def init_device(self, local_rank: int) -> str:
        import torch
        self.device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(self.device)
        return str(self.device)

    def inspect(self):
        return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])


class RayWorkerProc:
    """>= 0.24's worker actor (``RayExecutorV2``)."""

    def get_node_and_physical_gpu_ids(self):
        ids = ray.get_runtime_context().get_accelerator_ids()["GPU"]
        return ray.get_runtime_context().get_node_id(), [int(x) for x in ids]

    def initialize_worker(self, local_rank: int, env_vars: Dict[str, str],
                          assigned_physical_gpu_ids: List[int]) -> str:
        import os

        import torch
        os.environ.update(env_vars)
        self.device = torch.device(f"cuda:{assigned_physical_gpu_ids[local_rank]}")
        torch.accelerator.set_device_index(self.device)
        return str(self.device)

    def inspect(self):
        import os
        ids = ray.get_runtime_context().get_accelerator_ids()["GPU"]
        return inspect(gpu_ids=[str(g) for g in ids], noset=os.environ.get(NOSET))


class EngineCore:
    """The CPU-only engine/driver side actor."""

    def inspect(self):
        return inspect()


def _placement(world_size: int, per_worker_gpus: float,
               bundle_indices: Optional[Sequence[int]]):
    pg = placement_group([{"GPU": max(per_worker_gpus, 1), "CPU": 0}] * world_size,
                         strategy="PACK")
    ray.get(pg.ready(), timeout=120)
    return pg, list(bundle_indices) if bundle_indices else list(range(world_size))


def _strategy(pg, bundle: int) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=bundle,
                                            placement_group_capture_child_tasks=True)


def _node_layout(ids):
    """vLLM's ``node_workers`` / sorted ``node_gpus`` from (node, gpu ids) per rank."""
    node_workers, node_gpus = defaultdict(list), defaultdict(list)
    for rank, (node, gpus) in enumerate(ids):
        node_workers[node].append(rank)
        node_gpus[node].extend(int(g) for g in gpus)
    return node_workers, {n: sorted(g) for n, g in node_gpus.items()}


def start_workers(world_size: int, gpu_memory_utilization: float = 0.9,
                  bundle_indices: Optional[Sequence[int]] = None, per_worker_gpus: float = 1,
                  init_device: bool = False):
    """<= 0.23: start the workers, rewrite ``CUDA_VISIBLE_DEVICES``, optionally
    ``init_device``; returns (placement group, workers in rank order)."""
    pg, bundles = _placement(world_size, per_worker_gpus, bundle_indices)
    num_gpus = gpu_memory_utilization if world_size == 1 else per_worker_gpus
    workers = [ray.remote(num_cpus=0, num_gpus=num_gpus, scheduling_strategy=_strategy(pg, b))(
        RayWorkerWrapper).remote() for b in bundles]
    ids = ray.get([w.get_node_and_gpu_ids.remote() for w in workers], timeout=300)
    node_workers, node_gpus = _node_layout(ids)
    ray.get([w.update_environment_variables.remote(
        {"CUDA_VISIBLE_DEVICES": ",".join(map(str, node_gpus[node]))})
        for w, (node, _) in zip(workers, ids)], timeout=60)
    if init_device:
        ray.get([w.init_device.remote(node_workers[node].index(rank))
                 for rank, (w, (node, _)) in enumerate(zip(workers, ids))], timeout=120)
    return pg, workers


def start_workers_v2(world_size: int, bundle_indices: Optional[Sequence[int]] = None,
                     per_worker_gpus: float = 1):
    """>= 0.24 (``RayExecutorV2``): returns (placement group, workers in rank order,
    the device string each worker selected)."""
    pg, bundles = _placement(world_size, per_worker_gpus, bundle_indices)
    runtime_env = {"env_vars": {NOSET: "1"}}
    workers = [ray.remote(RayWorkerProc).options(
        num_cpus=0, num_gpus=per_worker_gpus, scheduling_strategy=_strategy(pg, b),
        runtime_env=runtime_env).remote() for b in bundles]
    ids = ray.get([w.get_node_and_physical_gpu_ids.remote() for w in workers], timeout=300)
    node_workers, node_gpus = _node_layout(ids)
    devices = ray.get([w.initialize_worker.remote(node_workers[node].index(rank), {},
                                                  node_gpus[node])
                       for rank, (w, (node, _)) in enumerate(zip(workers, ids))], timeout=120)
    return pg, workers, devices


def stop_workers(pg, workers: List) -> None:
    for w in workers:
        ray.kill(w)
    if pg is not None:
        remove_placement_group(pg)


@contextlib.contextmanager
def stopping(pg, workers: List):
    """Stop the workers (and free their GPUs) however the block ends."""
    try:
        yield
    finally:
        stop_workers(pg, workers)
