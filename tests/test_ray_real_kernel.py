"""A real local Ray cluster on this machine's real kernel (one NUMA node).

Only NVML is replaced (two fake GPUs NVML places on node 0, one it cannot place),
so the worker hook, the numactl prefix and the syscalls all act for real and each
actor reports its own /proc view.
"""
import shutil

import pytest

from conftest import ray_cluster
from tests.fixtures import nvml_only
from tests.inspect_proc import inspect, numactl_show

pytestmark = [pytest.mark.ray,
              pytest.mark.skipif(shutil.which("numactl") is None, reason="needs numactl")]


@pytest.fixture(scope="module")
def ray(tmp_path_factory):
    root = nvml_only.write(tmp_path_factory.mktemp("nvml-only"))
    with ray_cluster(fixture_root=root, num_gpus=3) as ray:
        yield ray


def make_probe(ray, **options):
    @ray.remote(**options)
    class Probe:
        def inspect(self):
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

        def numactl_show(self):
            return numactl_show()
    return Probe


def test_auto_binds_in_worker_at_gpu_assignment(ray):
    probe = make_probe(ray, num_gpus=1, runtime_env={"numa_bind": {"cpus": [1]}})
    r = ray.get(probe.remote().inspect.remote(), timeout=120)
    assert r["binding"]["status"] == "bound", r["binding"]
    assert r["binding"]["backend"] == "syscall"
    assert r["binding"]["gpus"] == r["gpu_ids"] and r["gpu_ids"][0] in ("0", "1")
    assert r["affinity"] == [1] and r["thread_cpus"] == ["1"]   # every thread
    assert r["cpus_allowed"] == "1"
    assert r["mempolicy"] == ["bind", [0]]   # the thread running the actor


def test_explicit_node_starts_worker_under_numactl(ray):
    probe = make_probe(ray, runtime_env={"numa_bind": {"node": 0, "cpus": [0]}})
    actor = probe.remote()
    r = ray.get(actor.inspect.remote(), timeout=120)
    assert r["binding"]["backend"] == "numactl" and r["binding"]["status"] == "bound"
    assert r["affinity"] == [0] and r["thread_cpus"] == ["0"]
    assert r["mempolicy"] == ["bind", [0]]
    shown = ray.get(actor.numactl_show.remote(), timeout=60)
    assert shown["policy"] == "bind" and shown["membind"] == "0"
    assert shown["physcpubind"] == "0"


def test_auto_on_a_one_node_machine_runs_unbound(ray):
    probe = make_probe(ray, num_gpus=1, runtime_env={"numa_bind": "auto"})
    r = ray.get(probe.remote().inspect.remote(), timeout=120)
    assert r["binding"]["status"] == "skipped"
    assert "single NUMA node" in r["binding"]["reason"]
    assert r["mempolicy"] == ["default", []] and len(r["affinity"]) >= 1


def test_bad_value_fails_at_remote_with_the_valid_forms(ray):
    from ray_numa.options import OptionsError
    probe = make_probe(ray, num_gpus=1)
    with pytest.raises(OptionsError, match='numa_bind accepts "auto"'):
        probe.options(runtime_env={"numa_bind": {"node": "zero"}}).remote()
    with pytest.raises(OptionsError, match="unknown key"):
        make_probe(ray, runtime_env={"numa_bind": {"nodes": 1}}).remote()


def test_strict_explicit_node_that_cannot_bind_fails_the_actor(ray):
    probe = make_probe(ray, runtime_env={"numa_bind": {"node": 5, "strict": True}})
    with pytest.raises(Exception) as err:
        ray.get(probe.remote().inspect.remote(), timeout=120)
    assert "numa_bind (strict): NUMA node 5" in str(err.value)


def test_strict_auto_with_unplaceable_gpu_fails_the_actor(ray):
    # CPU 4095 is not among the CPUs this process may use
    probe = make_probe(ray, num_gpus=3,
                       runtime_env={"numa_bind": {"strict": True, "cpus": [4095]}})
    with pytest.raises(Exception) as err:
        ray.get(probe.remote().inspect.remote(), timeout=120)
    assert ("numa_bind (strict): none of the CPUs chosen for GPU 0 (0000:3b:00.0) (4095) "
            "are allowed to this process") in str(err.value)


def test_non_strict_unplaceable_gpu_warns_and_actor_runs(ray):
    probe = make_probe(ray, num_gpus=3, runtime_env={"numa_bind": {"cpus": [4095]}})
    r = ray.get(probe.remote().inspect.remote(), timeout=120)
    assert r["binding"]["status"] == "skipped" and "are allowed" in r["binding"]["reason"]
    assert sorted(r["gpu_ids"]) == ["0", "1", "2"]


def test_wraps_the_interpreter_another_plugin_chose(ray):
    import sys
    # py_executable (priority 10) picks the interpreter; numa_bind (90) wraps it
    probe = make_probe(ray, num_gpus=1, runtime_env={
        "numa_bind": {"cpus": [0]}, "py_executable": f"{sys.executable} -X faulthandler"})

    r = ray.get(probe.remote().inspect.remote(), timeout=120)
    assert r["binding"]["status"] == "bound" and r["affinity"] == [0]
    flags = ray.get(make_flag_probe(ray).remote().flags.remote(), timeout=120)
    assert flags["faulthandler"] and flags["bound"] == "bound"


def make_flag_probe(ray):
    import sys

    @ray.remote(runtime_env={"numa_bind": {"node": 0, "cpus": [0]},
                             "py_executable": f"{sys.executable} -X faulthandler"})
    class Flags:
        def flags(self):
            import faulthandler
            import ray_numa
            return {"faulthandler": faulthandler.is_enabled(),
                    "bound": ray_numa.current_binding().status}
    return Flags


def test_kill_switch_in_a_jobs_env_vars_turns_binding_off(ray):
    probe = make_probe(ray, runtime_env={"numa_bind": {"node": 0, "cpus": [0]},
                                         "env_vars": {"RAY_NUMA_DISABLE": "1"}})
    r = ray.get(probe.remote().inspect.remote(), timeout=120)
    assert r["binding"]["status"] == "off" and "kill switch" in r["binding"]["reason"]
    assert len(r["affinity"]) == len(__import__("os").sched_getaffinity(0))
    assert r["mempolicy"] == ["default", []]
