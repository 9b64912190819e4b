"""Plans the runtime-env agent prepares (ray_numa/prepared.py): a worker takes one only
where it is exactly the plan the worker would have made itself."""
import json

import pytest

from ray_numa import prepared
from ray_numa.planning import plan_for
from ray_numa.cpusets import process_limits
from ray_numa.environment import PLANS_ENV
from ray_numa.options import parse

MODES = ["auto", {"cpus": "socket"}, {"cpus": "exclusive"}, {"cpus": "core-complex"},
         {"memory": "interleave", "strict": True}, {"cpus": [1, 2, 3]}]


@pytest.mark.parametrize("machine", ["dgx-h100", "amd-nps4", "gb200", "cpuset-container",
                                     "workstation"])
@pytest.mark.parametrize("numa_bind", MODES)
def test_the_agents_plan_for_each_gpu_is_the_workers_own(on_machine, monkeypatch, machine,
                                                         numa_bind):
    on_machine(machine)
    options = parse(numa_bind)
    monkeypatch.setenv(PLANS_ENV, prepared.for_agent(options))
    ids = sorted(json.loads(prepared.for_agent(options))["plans"])
    assert ids      # every fixture here has GPUs
    for gpu in ids:
        decision, nodes = prepared.lookup(options, [gpu], process_limits())
        assert decision == plan_for(options, [gpu]), (machine, gpu)   # Plan or Skip


def test_the_ids_planned_are_the_ones_ray_assigns(on_machine, monkeypatch):
    on_machine("dgx-h100")
    plans = json.loads(prepared.for_agent(parse("auto")))
    assert sorted(plans["plans"]) == [str(i) for i in range(8)] and plans["nodes"] == [0, 1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,7")   # the raylet's: Ray's ids are these
    assert sorted(json.loads(prepared.for_agent(parse("auto")))["plans"]) == ["6", "7"]


@pytest.mark.parametrize("change", ["options", "order", "fixture", "cpuset", "affinity",
                                    "two gpus", "unknown id", "garbage", "unset"])
def test_a_worker_plans_itself_unless_everything_a_plan_depends_on_matches(
        on_machine, monkeypatch, machine_tree, change):
    on_machine("dgx-h100")
    options, gpus, limits = parse("auto"), ["3"], process_limits()
    monkeypatch.setenv(PLANS_ENV, prepared.for_agent(options))
    assert prepared.lookup(options, gpus, limits) is not None
    if change == "options":
        options = parse({"cpus": "socket"})
    elif change == "order":
        monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    elif change == "fixture":
        on_machine("amd-nps4")
    elif change == "cpuset":
        limits = ("0-55", *limits[1:])
    elif change == "affinity":
        limits = (*limits[:2], (0, 1))
    elif change == "two gpus":
        gpus = ["3", "4"]
    elif change == "unknown id":
        gpus = ["9"]
    elif change == "garbage":
        monkeypatch.setenv(PLANS_ENV, "{not json")
    else:
        monkeypatch.delenv(PLANS_ENV)
    assert prepared.lookup(options, gpus, limits) is None


def test_a_gpu_worker_with_the_agents_plan_reads_no_topology(on_machine, monkeypatch):
    """What the plan saves: the first bind reads no sysfs file and loads no GPU code,
    nor the planner (policy, planning: ~1 ms of imports)."""
    import subprocess
    import sys
    root = on_machine("dgx-h100")
    env = {PLANS_ENV: prepared.for_agent(parse("auto")), "RAY_NUMA_FIXTURE": str(root),
           "RAY_NUMA_SPEC": parse("auto").to_json()}
    code = ("import json, sys\n"
            "from ray_numa.topology import opened_files\n"   # the audit hook, loaded first
            "from ray_numa.binding import process_binder\n"
            "from ray_numa.options import parse\n"
            "b, files = opened_files(lambda: process_binder().bind(parse('auto'), ['5']))\n"
            "print(json.dumps({'cpus': b.cpus, 'files': files,\n"
            "  'gpus_module': 'ray_numa.gpus' in sys.modules,\n"
            "  'planner': sorted({'ray_numa.planning', 'ray_numa.policy'} & set(sys.modules))}))\n")
    import os
    out = json.loads(subprocess.run([sys.executable, "-c", code], check=True, text=True,
                                    capture_output=True, env=dict(os.environ, **env)
                                    ).stdout.splitlines()[-1])
    assert out["cpus"] == "56-111,168-223"             # GPU 5 is on node 1
    data = [f for f in out["files"] if not f.endswith((".py", ".pyc", ".so"))]  # not imports
    assert not [f for f in data if f.startswith(str(root / "sys"))], data   # no sysfs read
    assert not out["gpus_module"] and out["planner"] == []
