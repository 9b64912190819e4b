"""GPU tasks get the memory policy they asked for (issue 21, item 4), on a real Ray.

Ray gives a remote function with ``num_gpus > 0`` ``max_calls=1`` unless it says
otherwise (``ray/remote_function.py``), and a worker exits once it has run a
function ``max_calls`` times (``_raylet.pyx``, ``execute_task_with_cancellation_handler``):
such a worker never runs another GPU assignment, so it is not pooled. Only
``max_calls=0`` (unlimited) or more than 1 lets Ray reuse it for a task with other
GPUs, where the pooled policy 'local' applies. The cluster sees the DGX H100
fixture, so the recording backend records each ``set_mempolicy`` the worker made.
"""
import pytest

from ray_numa.binding import POOLED_NOTE
from tests.inspect_proc import inspect
# the module's cluster: 8 fake GPUs seen as a DGX H100
from tests.test_ray_fixture_dgx import ray  # noqa: F401

pytestmark = pytest.mark.ray




def mempolicy_calls(binding):
    return [c[1] for c in binding["calls"] if c[0] == "set_mempolicy"]


def run(ray, options, **remote):
    @ray.remote(num_gpus=1, max_retries=0, runtime_env={"numa_bind": options}, **remote)
    def gpu_task():
        return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])
    return ray.get(gpu_task.remote(), timeout=180)


@pytest.mark.parametrize("memory", ["bind", "interleave"])
def test_a_default_gpu_task_gets_the_policy_it_asked_for(ray, memory):
    b = run(ray, {"memory": memory, "strict": True})["binding"]
    assert b["status"] == "bound" and b["memory"] == memory
    assert mempolicy_calls(b)[-1] == memory            # what the worker last applied
    assert f"memory {memory} " in b["reason"] and not any("pooled" in n for n in b["notes"])


def test_a_task_ray_may_reuse_gets_local_and_says_so(ray):
    for max_calls in (0, 2):
        b = run(ray, "auto", max_calls=max_calls)["binding"]
        assert b["status"] == "bound" and b["memory"] == "local"
        assert mempolicy_calls(b) == ["local"]
        assert POOLED_NOTE.format(memory="bind") in b["notes"]
        assert ", memory local " in b["reason"]          # the record agrees with itself


def test_strict_refuses_a_pooled_worker_the_weaker_policy(ray):
    with pytest.raises(ray.exceptions.RayTaskError) as failure:
        run(ray, {"memory": "interleave", "strict": True}, max_calls=0)
    message = str(failure.value)
    assert "numa_bind (strict): memory 'interleave' was asked for, but this task's " \
           "function has max_calls=0" in message
    assert "max_calls=1" in message
    # no memory policy asked for: nothing to downgrade, strict lets a pooled worker be
    b = run(ray, {"memory": "none", "strict": True}, max_calls=0)["binding"]
    assert b["status"] == "bound" and b["memory"] == "none" and mempolicy_calls(b) == []
