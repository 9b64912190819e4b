"""No value of a RAY_NUMA_* variable stops a real Ray worker (issue 21, item 6).

Each value goes into a GPU task's ``runtime_env`` ``env_vars`` (as a user or a
deployment sets it), the task asks for ``numa_bind: "auto"`` on the DGX H100 fixture,
and it must return, bound or saying why not. Before, ``RAY_NUMA_LOG_LEVEL=BASIC_FORMAT``
(an attribute of ``logging`` that is no level) raised out of the assignment hook and
Ray reported the worker crashed. The variables the plugin sets itself
(``RAY_NUMA_SPEC``, ``_PLANS``, ``_GPU_TABLE``, ``_NUMACTL_ARGV``) are overwritten by
it here; ``tests/test_env_values.py`` feeds them to the worker code directly.
"""
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ray_numa import environment
from tests.inspect_proc import inspect
# the module's cluster: 8 fake GPUs seen as a DGX H100
from tests.test_ray_fixture_dgx import ray  # noqa: F401
from tests.test_env_values import TEXT

pytestmark = pytest.mark.ray




VARIABLES = (environment.LOG_LEVEL_ENV, environment.DISABLE_ENV, environment.FIXTURE_ENV)


@given(values=st.lists(st.tuples(TEXT, TEXT, TEXT), min_size=2, max_size=2))
@example(values=[("BASIC_FORMAT", "", ""), ("10", "nope", ""), ("Logger", "yes", "/nowhere")])
@settings(max_examples=1, deadline=None, database=None)
def test_a_gpu_worker_starts_whatever_the_variables_say(ray, values):
    """One worker per drawn triple (few: each is a real worker on 2 shared cores)."""
    @ray.remote(num_gpus=1, max_retries=0)
    def gpu_task():
        return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    # a blank RAY_NUMA_FIXTURE would be this machine's view, not the cluster's fixture
    envs = [{k: v for k, v in zip(VARIABLES, triple)
             if k != environment.FIXTURE_ENV or v.strip()} for triple in values]
    refs = [gpu_task.options(runtime_env={"numa_bind": "auto", "env_vars": env}).remote()
            for env in envs]
    for env, report in zip(envs, ray.get(refs, timeout=300)):
        status = report["binding"]["status"]
        if environment.disabled(env):
            assert status == "off", (env, report["binding"])
        elif environment.FIXTURE_ENV not in env:     # the cluster's fixture
            assert status == "bound", (env, report["binding"])
        else:       # another machine's view, maybe none: it says why it did not bind
            assert status in ("bound", "skipped"), (env, report["binding"])
