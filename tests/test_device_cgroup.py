"""The right GPU when this process may open only some of the machine's GPUs.

Under Slurm ``ConstrainDevices`` (any device cgroup) NVML counts every GPU of the
box but refuses the handles of those the process may not open with
``NVML_ERROR_NO_PERMISSION`` (NVIDIA/nvidia-docker#393), while the CUDA driver
enumerates only the GPUs it can open: a job given GPUs 4-7 of a DGX H100 with
``CUDA_VISIBLE_DEVICES=0,1,2,3`` and ``SLURM_LOCALID=0`` drives physical GPU 4, on
node 1. Fixture ``dgx-h100-gpus-4-7`` is that job step (tests/fixtures/machines.py).
"""
import json
import os
import shutil

import pynvml
import pytest

from conftest import ray_cluster
from ray_numa import gpus
from ray_numa.fake_nvml import FakeNvml
from ray_numa.options import parse
from ray_numa.planning import plan_for
from ray_numa.topology import format_cpulist
from tests.fixtures.build import build_spec
from tests.fixtures.machines import DGX_H100_GPUS_4_7_NO_NVML
from tests.inspect_proc import inspect
from tests.test_cli_launcher import ray_numa

NODE1 = "56-111,168-223"
OWN = ["0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0"]   # GPUs 4-7


def test_the_fake_nvml_refuses_as_pynvml_does(machine_tree):
    nvml = FakeNvml(machine_tree("dgx-h100-gpus-4-7") / "nvml.json")
    nvml.nvmlInit()
    assert nvml.nvmlDeviceGetCount() == 8                 # NVML counts every GPU
    for index in range(4):
        with pytest.raises(pynvml.NVMLError_NoPermission):
            nvml.nvmlDeviceGetHandleByIndex(index)
    assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(4)).startswith("GPU-")
    nvml.nvmlShutdown()


def test_nvml_keeps_the_gpus_it_opens_and_says_which_it_left_out(on_machine):
    on_machine("dgx-h100-gpus-4-7")
    found, source = gpus.discover_gpus()
    assert [g.bus_id for g in found] == OWN and [g.index for g in found] == [0, 1, 2, 3]
    assert source.startswith("nvml;")
    assert "NVML device 0: Insufficient Permissions" in source


def test_the_sysfs_fallback_counts_only_gpus_whose_device_file_opens(on_machine):
    root = on_machine("dgx-h100-gpus-4-7-no-nvml")
    found, source = gpus.discover_gpus()
    assert [g.bus_id for g in found] == OWN
    assert source.startswith("sysfs (NVML unavailable")
    assert f"0000:18:00.0: this process cannot open {root}/dev/nvidia0 (missing)" in source


def test_the_sysfs_fallback_never_guesses_what_it_cannot_tell(tmp_path, monkeypatch):
    root = build_spec(DGX_H100_GPUS_4_7_NO_NVML, tmp_path / "m")
    driver = root / "proc/driver/nvidia/gpus"
    shutil.rmtree(driver / "0000:9a:00.0")                          # the driver lists no GPU 4
    info = driver / "0000:ab:00.0/information"                      # nor GPU 5's minor
    info.write_text(info.read_text().replace("Device Minor", "Minor"))
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(root))
    found, source = gpus.discover_gpus()
    assert [g.bus_id for g in found] == OWN[2:]
    assert "0000:9a:00.0: the NVIDIA driver does not list it" in source
    assert "0000:ab:00.0: no device minor in" in source


@pytest.mark.parametrize("machine", ["dgx-h100-gpus-4-7", "dgx-h100-gpus-4-7-no-nvml"])
def test_launcher_binds_cuda_0_near_physical_gpu_4(on_machine, monkeypatch, machine):
    from ray_numa.launcher import bind_current_process
    on_machine(machine)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")     # what Slurm sets there
    monkeypatch.setenv("SLURM_LOCALID", "0")
    b = bind_current_process()
    assert b.status == "bound" and b.gpus == ("0",) and b.cpus == NODE1
    assert "0000:9a:00.0" in b.reason


def test_the_cpu_split_counts_every_gpu_of_the_machine(on_machine):
    """cpus="exclusive": physical GPU 4 gets the share it gets when every GPU is
    visible, so jobs on GPUs 0-3 and 4-7 (or 4-5 and 6-7) never share a core."""
    options = parse({"cpus": "exclusive"})
    on_machine("dgx-h100")
    whole = [format_cpulist(plan_for(options, [str(g)]).cpus) for g in range(4, 8)]
    for machine in ("dgx-h100-gpus-4-7", "dgx-h100-gpus-4-7-no-nvml"):
        on_machine(machine)
        assert [format_cpulist(plan_for(options, [str(g)]).cpus) for g in range(4)] == whole


def test_exec_binds_near_the_gpu_the_job_was_given(machine_tree):
    env = {"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100-gpus-4-7")),
           "CUDA_VISIBLE_DEVICES": "0,1,2,3", "SLURM_LOCALID": "0"}
    proc = ray_numa("exec", "--", "true", env=env)
    assert "GPU 0 (0000:9a:00.0) -> CPUs of node(s) 1" in proc.stderr
    assert f"(CPUs {NODE1}, memory bind 1, via record)" in proc.stderr


@pytest.fixture(scope="module")
def slurm_job(machine_tree):
    """A real local Ray started inside the job step (Slurm's CUDA_VISIBLE_DEVICES),
    with "auto" for the whole job; yields ``(ray, cpus)``, ``cpus`` the exclusive
    shares of GPUs 4-7 on the whole DGX H100 (computed before the cluster starts)."""
    saved = os.environ.get("RAY_NUMA_FIXTURE")
    os.environ["RAY_NUMA_FIXTURE"] = str(machine_tree("dgx-h100"))
    gpus._discover.cache_clear()
    cpus = {g: format_cpulist(plan_for(parse({"cpus": "exclusive"}), [str(g)]).cpus)
            for g in range(4, 8)}
    gpus._discover.cache_clear()
    if saved is None:
        del os.environ["RAY_NUMA_FIXTURE"]
    os.environ["CUDA_VISIBLE_DEVICES"] = "0,1,2,3"
    try:
        with ray_cluster(fixture_root=machine_tree("dgx-h100-gpus-4-7"), num_gpus=4,
                         job_runtime_env={"numa_bind": "auto"}) as ray:
            yield ray, cpus
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        if saved is not None:
            os.environ["RAY_NUMA_FIXTURE"] = saved
        gpus._discover.cache_clear()


@pytest.mark.ray
def test_ray_workers_bind_near_the_gpus_the_job_was_given(slurm_job):
    """The agent's GPU table and plans, and the workers, all see GPUs 4-7 as Ray's
    GPU ids 0-3."""
    ray, on_dgx = slurm_job

    @ray.remote(num_gpus=1, num_cpus=0)
    class Model:
        def inspect(self):
            from ray_numa import environment
            plans = json.loads(os.environ.get(environment.PLANS_ENV, "{}"))
            table = json.loads(os.environ.get(environment.GPU_TABLE_ENV, "{}"))
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                           planned=sorted(plans.get("plans", {})),
                           table=[g["bus_id"] for g in table.get("gpus", [])])

    auto = [Model.remote() for _ in range(2)]          # the job's "auto"
    split = [Model.options(runtime_env={"numa_bind": {"cpus": "exclusive"}}).remote()
             for _ in range(2)]
    reports = ray.get([a.inspect.remote() for a in auto + split], timeout=300)
    assert sorted(r["gpu_ids"][0] for r in reports) == ["0", "1", "2", "3"]
    for r in reports:
        assert r["table"] == OWN and r["planned"] == ["0", "1", "2", "3"]
        assert r["binding"]["status"] == "bound" and r["binding"]["cpu_nodes"] == [1]
    assert [r["binding"]["cpus"] for r in reports[:2]] == [NODE1, NODE1]
    for r in reports[2:]:
        assert r["binding"]["cpus"] == on_dgx[4 + int(r["gpu_ids"][0])]
    for a in auto + split:
        ray.kill(a)


@pytest.mark.ray
def test_the_driver_is_never_bound_and_says_so(slurm_job):
    """Issue 21 item 7: with the job's "auto" the driver's record used to say the
    plugin was not enabled, on a cluster where it binds every GPU worker."""
    from ray_numa import current_binding
    b = current_binding()
    assert b.status == "unbound" and "not enabled" not in b.reason
    assert "this is the Ray driver" in b.reason and "never the driver" in b.reason
    assert "bind_current_process" in b.reason


def _dgx_whose_nvml(tmp_path, monkeypatch, change):
    """The DGX H100 with ``change(devices)`` applied to its fake NVML's answer."""
    from tests.fixtures.build import build
    root = build("dgx-h100", tmp_path / "dgx")
    spec = json.loads((root / "nvml.json").read_text())
    change(spec["devices"])
    (root / "nvml.json").write_text(json.dumps(spec))
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(root))
    gpus._discover.cache_clear()
    return root


ALL8 = ["0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", *OWN]


def _set(indices, **fields):
    def change(devices):
        for index in indices:
            devices[index].update(fields)
    return change


@pytest.mark.parametrize("change, why", [
    # NVML opens GPU 3 but cannot name it: CUDA still counts it, so leaving it out
    # would make CUDA id 3 the GPU at 9a:00.0, on the other node
    (_set([3], attribute_error={"nvmlDeviceGetName": "UNKNOWN"}),
     "NVML device 3: Unknown Error"),
    # an old driver without nvmlDeviceGetPciInfo_v3
    (_set(range(8), attribute_error={"nvmlDeviceGetPciInfo": "FUNCTION_NOT_FOUND"}),
     "NVML device 0: Function Not Found"),
    # only NO_PERMISSION means "this process may not open it" (nvml.h): a lost GPU's
    # handle says nothing about what CUDA counts
    (_set([0], handle_error="GPU_IS_LOST"), "NVML device 0: GPU is lost"),
    (_set(range(8), handle_error="NO_PERMISSION"), "NVML refused all 8 GPUs"),
], ids=["name-unknown", "old-driver", "gpu-lost", "all-refused"])
def test_an_nvml_answer_that_cannot_be_trusted_gives_way_to_sysfs(tmp_path, monkeypatch,
                                                                  change, why):
    _dgx_whose_nvml(tmp_path, monkeypatch, change)
    found, source = gpus.discover_gpus()
    assert [g.bus_id for g in found] == ALL8
    assert source.startswith(f"sysfs (NVML unavailable: {why})")


def test_a_mig_uuid_nvml_cannot_give_is_optional(tmp_path, monkeypatch):
    _dgx_whose_nvml(tmp_path, monkeypatch, _set([0], mig_devices=["MIG-aaaa"], attribute_error={
        "nvmlDeviceGetMigDeviceHandleByIndex": "UNKNOWN"}))
    found, source = gpus.discover_gpus()
    assert [g.bus_id for g in found] == ALL8 and source == "nvml"
    assert found[0].mig_uuids == ()
