"""Following from a thread other than main, in real Ray actors (issue 21.5).

Ray 2.60 runs a threaded actor's methods (``max_concurrency > 1``) on a pool and an
async actor's (Serve replicas) on its event loop thread; the task-start hook
(``Worker.record_task_log_start``) runs on the pool thread, or for an async actor on
a fiber thread. ``set_mempolicy(2)`` sets the calling thread's policy only, so a
``torch.cuda.set_device`` there rebinds that thread alone: the record must say that
main kept the old policy, and each thread that runs a later method takes the new one
at its start. A DGX H100 fixture (the recording backend): the calls and the record;
the real kernel's view is in the VM tier (tests/vm/inside/test_ray_in_vm.py).
"""
import os
import threading

import pytest

from tests.test_follow import calls_for
from tests.test_ray_vllm_follow import ray  # noqa: F401  (the DGX cluster, torch stand-in)

pytestmark = pytest.mark.ray


class Follower:
    def select(self):
        """Select a GPU on the other node than the assigned one, on this thread."""
        import ray
        from ray_numa import current_binding
        entry = current_binding().as_dict()
        assigned = int(ray.get_gpu_ids()[0])
        os.environ["CUDA_VISIBLE_DEVICES"] = "0,1,2,3,4,5,6,7"
        import torch
        torch.cuda.set_device(6 if assigned < 4 else 2)
        return dict(entry=entry, binding=current_binding().as_dict(), assigned=assigned,
                    thread=threading.get_native_id(), main=threading.main_thread().native_id)

    def later(self):
        from ray_numa import current_binding
        return dict(binding=current_binding().as_dict(), thread=threading.get_native_id())


class AsyncFollower(Follower):
    async def select(self):
        return Follower.select(self)

    async def later(self):
        return Follower.later(self)


@pytest.mark.parametrize("kind", ["threaded", "async"])
def test_follow_off_main_is_recorded_per_thread_and_later_threads_catch_up(ray, kind):
    cls, extra = (Follower, dict(max_concurrency=2)) if kind == "threaded" else (
        AsyncFollower, {})
    actor = ray.remote(num_gpus=1, num_cpus=0, **extra)(cls).remote()
    r = ray.get(actor.select.remote(), timeout=300)
    later = ray.get([actor.later.remote() for _ in range(4)], timeout=300)
    old = 0 if r["assigned"] < 4 else 1
    new = 1 - old
    assert r["thread"] != r["main"]
    # before the follow: the bind ran on main; the thread running the method (and for
    # an async actor the fiber thread of the hook) took its policy at the task's start
    entry_calls = [list(c) for c in r["entry"]["calls"]]
    assert entry_calls[:3] == calls_for(old)
    # one catch-up for the pool thread; for an async actor one for the fiber thread that
    # starts the task and one for the event loop thread that runs the method
    assert entry_calls[3:] == [["set_mempolicy", "bind", str(old)]] * (
        1 if kind == "threaded" else 2), entry_calls
    b = r["binding"]
    assert list(b["mem_nodes"]) == [new] and b["gpu_rule"] == "followed device"
    by_tid = {t["tid"]: (t["main"], t["memory"], t["nodes"]) for t in b["thread_policies"]}
    assert by_tid[r["main"]] == (True, "bind", [old])          # main: not moved (yet)
    assert by_tid[r["thread"]] == (False, "bind", [new])
    for report in later:     # the record kept up with every thread that ran a method
        tids = {t["tid"]: t["nodes"] for t in report["binding"]["thread_policies"]}
        assert tids[report["thread"]] == [new] and tids[r["main"]] == [old], report
    ray.kill(actor)
