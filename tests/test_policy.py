"""Binding decisions on fixture copies of real machines (no process is changed)."""
import pytest

from ray_numa.planning import plan_for
from ray_numa.options import parse
from ray_numa.policy import Plan, Skip
from ray_numa.topology import format_cpulist

DGX0, DGX1 = "0-55,112-167", "56-111,168-223"


def plan(value, gpus=()):
    return plan_for(parse(value), [str(g) for g in gpus])


def assert_plan(decision, cpus, mem_nodes, memory="bind"):
    assert isinstance(decision, Plan), decision
    assert format_cpulist(decision.cpus) == cpus
    assert decision.mem_nodes == tuple(mem_nodes)
    assert decision.memory == memory


@pytest.mark.parametrize("gpu,cpus,node", [(0, DGX0, 0), (3, DGX0, 0), (4, DGX1, 1), (7, DGX1, 1)])
def test_dgx_each_gpu_binds_to_its_socket(on_machine, gpu, cpus, node):
    on_machine("dgx-h100")
    assert_plan(plan("auto", [gpu]), cpus, [node])


def test_dgx_multi_gpu_span_policies(on_machine):
    on_machine("dgx-h100")
    assert_plan(plan("auto", [3, 4]), "0-223", [0, 1])
    assert_plan(plan({"span": "first"}, [4, 3]), DGX1, [1])
    skip = plan({"span": "skip"}, [3, 4])
    assert isinstance(skip, Skip) and "span NUMA nodes 0-1" in skip.reason
    assert_plan(plan("auto", [1, 2]), DGX0, [0])        # same node: no span question


def test_dgx_memory_policies(on_machine):
    on_machine("dgx-h100")
    assert_plan(plan({"memory": "preferred"}, [5]), DGX1, [1], "preferred")
    assert_plan(plan({"memory": "interleave"}, [0, 7]), "0-223", [0, 1], "interleave")
    assert_plan(plan({"memory": "none"}, [5]), DGX1, [], "none")
    pref = plan({"memory": "preferred"}, [7, 0])
    assert pref.mem_nodes == (0, 1) and pref.home == 1        # GPU 7's own node
    assert "MPOL_PREFERRED_MANY" in pref.notes[0] and "else node 1" in pref.notes[0]


def test_dgx_exclusive_splits_physical_cores_among_the_nodes_gpus(on_machine):
    on_machine("dgx-h100")
    shares = [plan({"cpus": "exclusive"}, [g]).cpus for g in range(4)]
    assert format_cpulist(shares[1]) == "14-27,126-139"
    assert all(len(s) == 28 for s in shares)
    assert frozenset().union(*shares) == frozenset(range(0, 56)) | frozenset(range(112, 168))
    assert all(a.isdisjoint(b) for i, a in enumerate(shares) for b in shares[i + 1:])


def test_explicit_nodes_and_cpu_lists(on_machine):
    on_machine("dgx-h100")
    assert_plan(plan(1), DGX1, [1])
    assert_plan(plan({"node": [0, 1], "memory": "interleave"}), "0-223", [0, 1], "interleave")
    d = plan({"cpus": [2, 3, 60]}, [0])
    assert_plan(d, "2-3,60", [0, 1])
    missing = plan(5)
    assert isinstance(missing, Skip) and "node 5" in missing.reason and "nodes 0-1" in missing.reason


def test_nps4_node_socket_and_core_complex(on_machine):
    on_machine("amd-nps4")
    assert_plan(plan("auto", [0]), "24-47,216-239", [1])    # GPU 0 sits on node 1
    assert_plan(plan({"cpus": "socket"}, [0]), "0-95,192-287", [0, 1, 2, 3])
    assert_plan(plan({"cpus": "socket"}, [7]), "96-191,288-383", [4, 5, 6, 7])
    assert_plan(plan({"cpus": "core-complex"}, [0]), "24-31,216-223", [1])


def test_gb200_hbm_node_binds_cpus_and_memory_to_nearest_grace(on_machine):
    on_machine("gb200")
    assert_plan(plan("auto", [0]), "0-71", [0])
    assert_plan(plan("auto", [3]), "72-143", [1])
    assert_plan(plan({"cpus": "exclusive"}, [1]), "36-71", [0])
    # naming the HBM node explicitly binds memory there, CPUs to its Grace
    assert_plan(plan(2), "0-71", [2])
    empty = plan(3)        # a MIG-reserved node: no CPUs, no memory
    assert_plan(empty, "0-71", [0])


def test_single_node_workstation_skips_even_with_unknown_gpu_node(on_machine):
    on_machine("workstation")
    d = plan("auto", [1])
    assert isinstance(d, Skip) and "single NUMA node" in d.reason
    assert_plan(plan(0), "0-31", [0])                     # explicit still applies


def test_cpuset_container_binds_to_the_intersection(on_machine):
    on_machine("cpuset-container")
    d = plan("auto", [2])
    assert_plan(d, "8-11,120-123", [0])
    assert "allows 8 of the 112 CPUs" in d.notes[0]
    assert_plan(plan("auto", [6]), "60-61,172-173", [1])
    outside = plan({"cpus": [30, 31]}, [0])
    assert isinstance(outside, Skip) and outside.reason.startswith("none of the CPUs")
    assert "(allowed: 8-11,60-61,120-123,172-173)" in outside.reason


def test_unknown_node_on_two_socket_machine_names_the_fix(on_machine, monkeypatch):
    on_machine("mixed")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    d = plan("auto", [1])
    assert isinstance(d, Skip) and not d.quiet
    assert "0000:65:00.0" in d.reason and "numa_node is -1" in d.reason
    assert "numa_bind={'node': N}" in d.fix
    assert_plan(plan("auto", [2]), "32-63", [1])
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    assert_plan(plan("auto", [0]), "32-63", [1])           # the H100 comes first


def test_mig_and_uuid_ids_from_ray(on_machine):
    root = on_machine("dgx-a100-mig")
    import json
    devices = json.loads((root / "nvml.json").read_text())["devices"]
    assert_plan(plan("auto", [devices[5]["mig_devices"][0]]), "64-127,192-255", [1])
    assert_plan(plan("auto", [devices[2]["uuid"]]), "0-63,128-191", [0])


def test_bad_gpu_id_is_a_skip_not_a_crash(on_machine):
    on_machine("dgx-h100")
    d = plan("auto", ["GPU-does-not-exist"])
    assert isinstance(d, Skip) and "names none" in d.reason


def test_exclusive_keeps_smt_siblings_together_and_shares_do_not_overlap(on_machine):
    on_machine("smt-l3")
    a, b = (plan({"cpus": "exclusive"}, [g]) for g in (0, 1))
    assert format_cpulist(a.cpus) == "0-15" and format_cpulist(b.cpus) == "16-31"
    for share in (a.cpus, b.cpus):
        assert all((c ^ 1) in share for c in share)          # sibling 2k <-> 2k+1
    assert_plan(plan({"cpus": "exclusive"}, [3]), "48-63", [1])


def test_core_complex_gives_each_gpu_an_l3_group(on_machine):
    on_machine("smt-l3")
    groups = [format_cpulist(plan({"cpus": "core-complex"}, [g]).cpus) for g in range(4)]
    assert groups == ["0-7", "8-15", "32-39", "40-47"]


def test_socket_mode_on_nps2_takes_both_nodes(on_machine):
    on_machine("smt-l3")
    assert_plan(plan({"cpus": "socket"}, [2]), "0-63", [0, 1])


@pytest.mark.parametrize("machine,gpu,cpus", [("dgx-h100", 6, DGX1), ("gb200", 2, "72-143")])
def test_core_complex_on_one_l3_per_socket_is_the_whole_node(on_machine, machine, gpu, cpus):
    on_machine(machine)
    assert format_cpulist(plan({"cpus": "core-complex"}, [gpu]).cpus) == cpus


def test_exclusive_on_nps4_with_one_gpu_per_node_is_the_whole_node(on_machine):
    on_machine("amd-nps4")
    assert_plan(plan({"cpus": "exclusive"}, [4]), "120-143,312-335", [5])


def test_cpuset_container_exclusive_splits_the_allowed_cores(on_machine):
    """Item 1/3: cores come from node CPUs & allowed CPUs, then the split."""
    on_machine("cpuset-container")
    shares = [format_cpulist(plan({"cpus": "exclusive"}, [g]).cpus) for g in range(4)]
    assert shares == ["8,120", "9,121", "10,122", "11,123"]
    for g in range(4, 8):               # 2 allowed cores on node 1 for its 4 GPUs
        d = plan({"cpus": "exclusive"}, [g])
        assert isinstance(d, Skip) and "only 2 allowed cores for 4 GPUs on node 1" in d.reason


def test_split_rule_gives_spare_cores_to_the_lowest_gpus(on_machine):
    """Item 2: q, r = divmod(cores, gpus); GPU k gets [k*q + min(k, r), +q + (k < r))."""
    from ray_numa.policy import split_range
    assert [split_range(10, k, 4) for k in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    on_machine("gb200")                  # 72 cores, GPUs 0-1 on Grace 0: 36 each
    assert [format_cpulist(plan({"cpus": "exclusive"}, [g]).cpus) for g in (0, 1)] == \
        ["0-35", "36-71"]


def test_single_node_machine_still_splits_for_exclusive_and_core_complex(on_machine):
    """Item 5: node/socket skip on one node; exclusive and core-complex split it,
    and numa_node -1 there can only mean the one node."""
    on_machine("workstation")
    assert isinstance(plan({"cpus": "socket"}, [0]), Skip)
    assert_plan(plan({"cpus": "exclusive"}, [0]), "0-7,16-23", [0])
    assert_plan(plan({"cpus": "exclusive"}, [1]), "8-15,24-31", [0])
    assert_plan(plan({"cpus": "core-complex"}, [1]), "8-15,24-31", [0])


def test_preferred_over_several_nodes_prefers_the_gpus_own_node(on_machine):
    """Item 6: socket mode on NPS4, GPU 0 sits on node 1: prefer 0-3 (preferred-many)
    with node 1 as the one-node fallback, not node 0."""
    on_machine("amd-nps4")
    d = plan({"cpus": "socket", "memory": "preferred"}, [0])
    assert_plan(d, "0-95,192-287", [0, 1, 2, 3], "preferred")
    assert d.home == 1
    assert plan({"cpus": "socket", "memory": "interleave"}, [2]).home == 3


def test_span_compares_cpu_nodes_not_memory_nodes(on_machine):
    """Item 7: GB200 GPUs 0 and 1 (HBM nodes 2 and 10) share Grace 0: no span."""
    on_machine("gb200")
    assert_plan(plan({"span": "skip"}, [0, 1]), "0-71", [0])
    assert isinstance(plan({"span": "skip"}, [1, 2]), Skip)


def test_explicit_node_without_memory_says_so_and_strict_refuses(on_machine):
    """Item 8: GB200 node 3 (MIG-reserved, no memory) under memory "bind"."""
    on_machine("gb200")
    d = plan({"node": 3})
    assert_plan(d, "0-71", [0])
    assert any("node 3 has no memory" in n and "node(s) 0 instead" in n for n in d.notes)
    strict = plan({"node": 3, "strict": True})
    assert isinstance(strict, Skip) and "node 3 has no memory" in strict.reason
    assert isinstance(plan({"node": 2, "strict": True}), Plan)
