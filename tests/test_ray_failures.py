"""Failure semantics on a real local Ray cluster (real kernel, NVML from a fixture).

What a Ray user relies on: a strict failure is the task's or actor's own error with
the reason, never a crashed worker that Ray retries or restarts; a CPU-only worker
under strict "auto" is simply left alone; ray-numa's lines land in the worker's own
log; a worker that could not set ray-numa up says why in ``current_binding()``.
"""
import glob
import os
import shutil
import sys

import pytest

from conftest import ray_cluster
from tests.fixtures import nvml_only
from tests.inspect_proc import inspect

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(shutil.which("numactl") is None, reason="needs numactl")]
# CPU 4095 is never among the CPUs this process may use: "auto" cannot bind. (A GPU
# with an unknown node is no longer unplaceable here: on a one-node machine it is on
# that node, as torch assumes too.)
UNPLACEABLE = ("numa_bind (strict): none of the CPUs chosen for GPU 0 (0000:3b:00.0) "
               "(4095) are allowed to this process")
STRICT = {"numa_bind": {"strict": True, "cpus": [4095]}}


@pytest.fixture(scope="module")
def ray(tmp_path_factory):
    root = nvml_only.write(tmp_path_factory.mktemp("nvml-only"))
    with ray_cluster(fixture_root=root, num_gpus=3) as ray:
        yield ray


def logs(ray, pattern="worker-*.err"):
    return glob.glob(os.path.join(ray._private.worker._global_node.get_logs_dir_path(),
                                  pattern))


def lines_with(ray, text, pattern="worker-*.err"):
    return [(path, line) for path in logs(ray, pattern)
            for line in open(path, errors="replace") if text in line]


def test_strict_auto_task_fails_once_with_the_reason_and_no_retries(ray):
    before = {path for path, _ in lines_with(ray, UNPLACEABLE)}

    @ray.remote(num_gpus=3, max_retries=3, runtime_env=STRICT)
    def task():
        return "ran"

    with pytest.raises(ray.exceptions.RayTaskError) as err:
        ray.get(task.remote(), timeout=180)
    assert UNPLACEABLE in str(err.value)
    assert not isinstance(err.value, ray.exceptions.WorkerCrashedError)
    # one worker process tried it (it logs the reason once), not 1 + 3 retries
    tried = {path for path, _ in lines_with(ray, UNPLACEABLE)} - before
    assert len(tried) == 1, tried


def test_strict_auto_actor_fails_creation_with_the_reason_and_no_restarts(ray):
    before = {path for path, _ in lines_with(ray, UNPLACEABLE)}

    @ray.remote(num_gpus=3, max_restarts=2, runtime_env=STRICT)
    class Model:
        def ping(self):
            return "pong"

    actor = Model.remote()
    with pytest.raises(ray.exceptions.ActorDiedError) as err:
        ray.get(actor.ping.remote(), timeout=180)
    assert UNPLACEABLE in str(err.value)
    assert "creation task" in str(err.value)
    tried = {path for path, _ in lines_with(ray, UNPLACEABLE)} - before
    assert len(tried) == 1, tried


def test_strict_auto_without_a_gpu_leaves_cpu_only_work_alone(ray):
    @ray.remote(num_cpus=1, runtime_env=STRICT)
    class Engine:
        def inspect(self):
            return inspect()

    @ray.remote(num_cpus=1, runtime_env=STRICT)
    def cpu_task():
        return inspect()

    for r in ray.get([Engine.remote().inspect.remote(), cpu_task.remote()], timeout=120):
        assert r["binding"]["status"] in ("unbound", "skipped"), r["binding"]
        assert r["mempolicy"] == ["default", []]


def test_lines_written_before_ray_connects_land_in_the_workers_own_log(ray):
    @ray.remote(runtime_env={"numa_bind": {"node": 0, "cpus": [0]}})
    class Pinned:
        def pid(self):
            return os.getpid()

    pid = ray.get(Pinned.remote().pid.remote(), timeout=120)
    line = f"pid {pid} bound:"
    own = [p for p, _ in lines_with(ray, line)]
    assert own and all(p.endswith(f"-{pid}.err") for p in own), own
    assert lines_with(ray, line, "raylet.err") == []


def test_current_binding_says_why_ray_numa_could_not_start(ray, tmp_path):
    shadow = tmp_path / "shadow"
    (shadow / "ray_numa").mkdir(parents=True)
    (shadow / "ray_numa" / "__init__.py").write_text(
        "raise ImportError('ray_numa is broken in this env')\n")
    path = os.pathsep.join([str(shadow), os.environ["PYTHONPATH"]])

    @ray.remote(runtime_env={"numa_bind": "auto", "env_vars": {"PYTHONPATH": path}})
    class Late:
        def binding(self):
            # ray_numa becomes importable later (e.g. from the working_dir)
            sys.path[:] = [p for p in sys.path if p != str(shadow)]
            for name in [m for m in sys.modules if m.startswith("ray_numa")]:
                del sys.modules[name]
            import ray_numa
            return os.getpid(), ray_numa.current_binding().as_dict()

    pid, binding = ray.get(Late.remote().binding.remote(), timeout=120)
    assert binding["status"] == "unbound"
    assert "ray_numa is not importable" in binding["reason"]
    assert "ray_numa is broken in this env" in binding["reason"]
    warned = [p for p, _ in lines_with(ray, "ray_numa is broken in this env")]
    assert warned and all(p.endswith(f"-{pid}.err") for p in warned), warned
    assert lines_with(ray, "ray_numa is broken in this env", "raylet.err") == []


def test_numa_bind_none_means_unset(ray):
    @ray.remote(num_gpus=1, runtime_env={"numa_bind": None, "env_vars": {"X": "1"}})
    class Plain:
        def inspect(self):
            return inspect()

    r = ray.get(Plain.remote().inspect.remote(), timeout=120)
    assert r["binding"]["status"] == "unbound" and r["binding"]["calls"] == []
    assert r["mempolicy"] == ["default", []]


def test_strict_explicit_node_stays_a_runtime_env_setup_error(ray):
    @ray.remote(runtime_env={"numa_bind": {"node": 5, "strict": True}})
    class Pinned:
        def ping(self):
            return "pong"

    with pytest.raises(ray.exceptions.RuntimeEnvSetupError) as err:
        ray.get(Pinned.remote().ping.remote(), timeout=120)
    assert "numa_bind (strict): NUMA node 5" in str(err.value)
