"""``ray-numa`` and ``bind_current_process`` in real processes.

``exec`` is checked by the command it runs reporting its own /proc view; the
torchrun-like launch starts two local ranks with a remapped CUDA_VISIBLE_DEVICES on
a fixture machine and checks each bound for its own physical GPU.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.procs import ROOT, child_report

LAST_CPU = max(os.sched_getaffinity(0))
REPORT = [sys.executable, "-c", "from tests.inspect_proc import report; report()"]


def ray_numa(*args, env=None, check=True):
    full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "ray_numa.cli", *args], capture_output=True,
                          text=True, env=full, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.skipif(shutil.which("numactl") is None, reason="needs numactl")
@pytest.mark.parametrize("via", [[], ["--numactl"]])
def test_exec_runs_the_command_bound(via):
    proc = ray_numa("exec", "--node", "0", "--cpus", str(LAST_CPU), *via, "--", *REPORT)
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["affinity"] == [LAST_CPU] and r["thread_cpus"] == [str(LAST_CPU)]
    assert r["mempolicy"] == ["bind", [0]]
    assert r["pid"] != os.getpid()


def test_exec_best_effort_runs_the_command_unbound_unless_strict():
    proc = ray_numa("exec", "--node", "9", "--best-effort", "--", *REPORT)
    assert "NUMA node 9 does not exist" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["mempolicy"] == ["default", []]
    strict = ray_numa("exec", "--node", "9", "--strict", "--", "true", check=False)
    assert strict.returncode == 1 and "numa_bind (strict): NUMA node 9" in strict.stderr


def test_exec_rejects_bad_options_clearly():
    proc = ray_numa("exec", "--cpus", "everything", "--", "true", check=False)
    assert proc.returncode == 2 and "cpus must be one of" in proc.stderr


def test_torchrun_like_ranks_bind_to_their_own_remapped_gpus(machine_tree):
    fixture = str(machine_tree("dgx-h100"))
    code = '''
        from ray_numa import bind_current_process
        report(binding=bind_current_process().as_dict())
    '''
    reports = [child_report(code, env={"RAY_NUMA_FIXTURE": fixture, "LOCAL_RANK": str(rank),
                                       "LOCAL_WORLD_SIZE": "2",
                                       "CUDA_VISIBLE_DEVICES": "6,1"})
               for rank in (0, 1)]
    assert [r["binding"]["gpus"] for r in reports] == [["6"], ["1"]]
    assert [r["binding"]["cpus"] for r in reports] == ["56-111,168-223", "0-55,112-167"]
    assert all(r["binding"]["backend"] == "record" for r in reports)


def test_exec_with_local_rank_on_a_fixture_records_the_plan(machine_tree):
    fixture = str(machine_tree("amd-nps4"))
    code = "from ray_numa import bind_current_process; report(binding=bind_current_process().as_dict())"
    r = child_report(code, env={"RAY_NUMA_FIXTURE": fixture, "SLURM_LOCALID": "2"})
    assert r["binding"]["gpus"] == ["2"] and r["binding"]["cpus"] == "72-95,264-287"


def test_bad_local_rank_is_reported():
    from ray_numa.launcher import local_rank
    assert local_rank({"LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4"}) == 3
    assert local_rank({}) == 0
    with pytest.raises(ValueError, match="outside LOCAL_WORLD_SIZE=2"):
        local_rank({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"})


@pytest.mark.parametrize("name", ["dgx-h100", "amd-nps4", "gb200", "workstation",
                                  "cpuset-container", "mixed", "dgx-a100-mig"])
def test_show_json_describes_each_fixture(machine_tree, name):
    r = json.loads(ray_numa("show", "--json", env={"RAY_NUMA_FIXTURE": str(machine_tree(name))}).stdout)
    from tests.fixtures.machines import MACHINES
    spec = MACHINES[name]
    assert [n["id"] for n in r["nodes"]] == sorted(spec["nodes"])
    assert [g["bus_id"] for g in r["gpus"]] == [g["bus_id"][4:].lower() for g in spec["gpus"]]
    assert r["gpu_source"] == "nvml" and r["process"]["set_mempolicy"].startswith("n/a")
    for g, s in zip(r["gpus"], spec["gpus"]):
        want = s.get("numa_node", s["pci_numa_node"])
        assert g["numa_node"] == (None if want == -1 else want)
        if len(spec["nodes"]) == 1:
            assert "single NUMA node" in g["plan"]["skip"]
        elif g["numa_node"] is None:
            assert "is unknown" in g["plan"]["skip"]
        else:
            assert g["plan"]["memory"] == "bind" and g["plan"]["cpus"]


def test_show_on_this_machine_probes_permissions():
    r = json.loads(ray_numa("show", "--json").stdout)
    # "yes" here (root, no seccomp); in a container without SYS_NICE it names EPERM
    assert r["process"]["set_mempolicy"] == "yes" or "Operation not permitted" in \
        r["process"]["set_mempolicy"]
    assert r["process"]["allowed_cpus"]


def test_env_and_resources_print_what_ray_start_needs(machine_tree):
    exports = ray_numa("env").stdout
    assert "RAY_RUNTIME_ENV_PLUGINS=" in exports and "ray_numa.plugin.NumaBindPlugin" in exports
    res = json.loads(ray_numa("resources", env={"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100"))}).stdout)
    assert res == {"numa_gpus_node0": 4.0, "numa_gpus_node1": 4.0}
    labels = json.loads(ray_numa("resources", "--labels",
                                 env={"RAY_NUMA_FIXTURE": str(machine_tree("gb200"))}).stdout)
    assert labels["ray-numa.io/node0-gpus"] == "2" and labels["ray-numa.io/node1-gpus"] == "2"
