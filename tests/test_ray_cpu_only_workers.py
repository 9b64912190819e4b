"""CPU-only workers under job-level ``"auto"`` stay untouched, on every Ray supported.

Ray 2.48 sets ``CUDA_VISIBLE_DEVICES=""`` on a worker whose task or actor has
``num_gpus=0``, so torch there sees no GPU. Ray 2.56 stopped doing so
(``ray._private.utils.set_visible_accelerator_ids`` skips a resource with no ids
unless ``RAY_EXPERIMENTAL_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO`` is set): a CPU-only worker
now sees every GPU of the node, and a device it selects through torch is a real GPU.
ray-numa must not bind such a worker, neither at assignment nor by following the
device it selects (ray_numa/follow.py): it holds no GPU, so there is nothing to be
near. .ci/run runs this file on Ray 2.48 and on the newest Ray.

A real local Ray cluster with 8 fake GPUs seen as a DGX H100; the workers import
the torch stand-in (``tests/standins/torchlib``, torch 2.13.0's selection API).
"""
import os

import pytest

from tests.inspect_proc import inspect
from tests.procs import child_report
from tests.test_follow import with_torch
# the same cluster: 8 fake GPUs seen as a DGX H100, the torch stand-in, job-level "auto"
from tests.test_ray_vllm_follow import ray  # noqa: F401


def ray_sets_empty_visible_devices() -> bool:
    """Ray before 2.56 hides every GPU from a ``num_gpus=0`` worker."""
    import ray
    return tuple(int(p) for p in ray.__version__.split(".")[:2]) < (2, 56)


def select_device(how: str):
    """Select CUDA device 0 through torch as a CPU-only worker's code might; returns
    the error torch raised ("" if none): with no GPU visible, torch refuses."""
    import torch
    try:
        if how == "set_device":
            torch.cuda.set_device(0)
        elif how == "set_device_index":
            torch.accelerator.set_device_index(0)
        else:
            with torch.cuda.device(0):
                pass
    except RuntimeError as exc:
        return str(exc)
    return ""


def check_untouched(report, driver_affinity):
    """Neither bound nor recorded: no call, the worker's CPUs as Ray started it."""
    b = report["binding"]
    assert b["status"] == "skipped" and b["calls"] == [] and b["gpus"] == [], b
    assert "no GPU assigned" in b["reason"], b
    assert report["affinity"] == driver_affinity
    assert report["mempolicy"] == ["default", []]
    assert report["cuda_visible_devices"] == ("" if ray_sets_empty_visible_devices()
                                              else None)


@pytest.mark.ray
@pytest.mark.parametrize("how", ["set_device", "set_device_index", "device"])
def test_cpu_only_actor_that_selects_a_device_is_not_bound(ray, how):
    @ray.remote(num_cpus=1)
    class Preprocessor:
        def run(self):
            error = select_device(how)
            import sys
            hooked = any(type(f).__name__ == "TorchImportHook" for f in sys.meta_path)
            return inspect(error=error, hooked=hooked)

    actor = Preprocessor.remote()
    r = ray.get(actor.run.remote(), timeout=120)
    ray.kill(actor)
    check_untouched(r, sorted(os.sched_getaffinity(0)))
    assert not r["hooked"]
    if how == "set_device":   # Ray 2.48: no GPU visible, torch refuses; 2.56+: selects
        assert bool(r["error"]) == ray_sets_empty_visible_devices(), r["error"]


@pytest.mark.ray
def test_cpu_only_task_that_selects_a_device_is_not_bound(ray):
    @ray.remote(num_cpus=1)
    def preprocess():
        return inspect(error=select_device("set_device"))

    r = ray.get(preprocess.remote(), timeout=120)
    check_untouched(r, sorted(os.sched_getaffinity(0)))


def test_a_cpu_only_assignment_after_a_gpu_one_follows_no_device(machine_tree):
    """A pooled task worker that ran a GPU task (bound, the follow hook installed) and
    is then given a CPU-only task, which on Ray >= 2.56 sees every GPU and selects
    one: that selection must not bind it. (Ray 2.60 did not hand a GPU task's worker
    to a CPU-only task in five tries here, but nothing in ray-numa may rely on it.)
    The worker's two calls, in a child process: ``Binder.bind`` as
    ``worker.on_assignment`` makes it for each assignment, then torch's selection."""
    r = child_report(with_torch('''
        from ray_numa.binding import process_binder
        from ray_numa.follow import install
        from ray_numa.options import BindOptions
        opts = BindOptions.from_json('{"node": "auto"}')
        gpu_task = process_binder().bind(opts, ["6"], gpu_rule="assigned", pooled=True)
        install()
        cpu_task = process_binder().bind(opts, [], gpu_rule="assigned", pooled=True)
        import torch
        torch.cuda.set_device(0)                 # CUDA_VISIBLE_DEVICES unset: 8 GPUs
        report(gpu_task=gpu_task.as_dict(), cpu_task=cpu_task.as_dict(),
               after=process_binder().binding.as_dict())
    '''), env={"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100"))})
    assert r["gpu_task"]["status"] == "bound" and r["cpu_task"]["status"] == "skipped"
    assert r["after"] == r["cpu_task"], r["after"]
