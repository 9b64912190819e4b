"""CPU modes against torch's own test cases, transcribed as data.

Source: pytorch/pytorch ``test/test_numa_binding.py`` (commit 07bfb4da9efcf4c80c308540b11bcee3e1d0f381),
class ``NumaBindingTest``; the rules it checks live in ``torch/numa/binding.py``
(commit 01c9f4fcc3ffa856d3d1b038998b8ad90db4ec02). Each case is the
``_add_mock_hardware(...)`` arguments, the local rank (= GPU index, all GPUs
visible), the affinity mode, and the CPUs torch binds to. Where that test file
expresses node/socket results as ``--cpunodebind=N``, the CPUs are node N's.
The trees are written by ``tests/fixtures/build.py`` in torch's sysfs shape
(siblings 2k/2k+1, no ``core_id``, a level-4 "ShouldSkip" cache, a stray file in
``cache/``), so our readers see what torch's do.

Where ray-numa deliberately differs, a test below says why.
"""
from pathlib import Path

import pytest

from ray_numa import binding, gpus, topology
from ray_numa.planning import plan_for
from ray_numa.options import parse
from ray_numa.policy import Plan, Skip
from ray_numa.topology import format_cpulist
from tests.fixtures.build import build_spec
from tests.fixtures.machines import torch_mock

# (torch test name, _add_mock_hardware args: sockets, nodes/socket, GPUs/node,
#  L3/node, cores/L3), affinity (None: all CPUs), mode, local rank, expected CPUs
TORCH_CASES = [
    ("test_node_numa_binding", (4, 2, 2, 4, 2), None, "node", 11, "80-95"),   # node 5
    ("test_socket_numa_binding_with_multiple_numa_per_socket", (4, 2, 2, 4, 2), None,
     "socket", 15, "96-127"),                                                   # nodes 6-7
    ("test_socket_numa_binding_with_single_numa_per_socket", (4, 1, 2, 4, 2), None,
     "socket", 7, "48-63"),                                                     # node 3
    ("test_exclusive_numa_binding", (2, 1, 2, 1, 3), None, "exclusive", 0, "0-3"),
    ("test_exclusive_numa_binding", (2, 1, 2, 1, 3), None, "exclusive", 1, "4-5"),
    ("test_core_complex_numa_binding_with_extra_l3", (2, 1, 2, 3, 3), None,
     "core-complex", 3, "24-29"),
    ("test_core_complex_numa_binding_with_fewer_l3_than_gpu", (2, 1, 2, 1, 3), None,
     "core-complex", 3, "6-11"),
    ("test_core_complex_prefers_caches_with_more_cpus", (1, 1, 1, 3, 3), "0,4,6-7,9",
     "core-complex", 0, "6-7,9"),
    ("test_core_complex_tiebreak_prefers_lower_cache_key", (1, 1, 1, 2, 1), None,
     "core-complex", 0, "0-1"),
]

# test_exclusive_raises_if_too_few_physical_cores: torch raises "There are only 1
# physical cores on numa_node_index=0, but there are 2 GPUs associated with this
# NUMA node."; ray-numa skips every GPU of that node with the same facts.
TOO_FEW = ((2, 1, 2, 1, 1), 1, "only 1 allowed cores for 2 GPUs on node 0")


@pytest.fixture
def on_mock(tmp_path_factory, monkeypatch):
    """``on_mock(shape, affinity=None, **kw)``: point ray-numa at torch's mock machine."""
    built = {}

    def use(shape, affinity=None, **kw) -> Path:
        key = repr((shape, affinity, sorted(kw.items())))
        if key not in built:
            status = {"cpus": affinity, "mems": "0-63"} if affinity else None
            built[key] = build_spec(torch_mock(*shape, status=status, **kw),
                                    tmp_path_factory.mktemp("torch-mock"))
        monkeypatch.setenv("RAY_NUMA_FIXTURE", str(built[key]))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        topology._cached_topology.cache_clear()
        gpus._discover.cache_clear()
        monkeypatch.setattr(binding, "_binder", None)
        return built[key]

    yield use
    topology._cached_topology.cache_clear()
    gpus._discover.cache_clear()


@pytest.mark.parametrize("name,shape,affinity,mode,rank,cpus", TORCH_CASES,
                         ids=[f"{c[0]}-rank{c[4]}" for c in TORCH_CASES])
def test_torch_case(on_mock, name, shape, affinity, mode, rank, cpus):
    on_mock(shape, affinity)
    decision = plan_for(parse({"cpus": mode}), [str(rank)])
    assert isinstance(decision, Plan), decision
    assert format_cpulist(decision.cpus) == cpus


def test_torch_too_few_cores_for_the_nodes_gpus(on_mock):
    shape, rank, reason = TOO_FEW
    on_mock(shape)
    for gpu in (0, rank):            # no GPU of the node is bound, not just the last
        decision = plan_for(parse({"cpus": "exclusive"}), [str(gpu)])
        assert isinstance(decision, Skip) and reason in decision.reason


def test_differs_peers_are_all_gpus_of_the_node_not_only_visible_ones(on_mock, monkeypatch):
    """torch counts ``torch.cuda.device_count()`` GPUs; under Ray each worker sees one,
    so torch's exclusive mode would hand every worker the whole node and co-located
    workers would share cores. ray-numa splits among all the machine's GPUs there."""
    on_mock((2, 1, 2, 1, 3))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")          # what Ray gives the worker
    assert format_cpulist(plan_for(parse({"cpus": "exclusive"}), ["1"]).cpus) == "4-5"


def test_differs_unknown_node_on_a_multi_node_machine_is_not_node_0(on_mock):
    """test_binds_to_node_0_if_node_stored_as_minus_one: torch reads numa_node -1 as
    node 0. That is right on a one-node machine (where "node" mode has nothing to
    do, so ray-numa skips), but on two sockets it would pin a GPU on socket 1 to
    socket 0's CPUs; ray-numa skips with the fix instead."""
    on_mock((1, 1, 1, 1, 1), pci_numa_node={0: -1})
    one = plan_for(parse("auto"), ["0"])
    assert isinstance(one, Skip) and "single NUMA node" in one.reason
    on_mock((2, 1, 1, 1, 1), pci_numa_node={1: -1})
    two = plan_for(parse("auto"), ["1"])
    assert isinstance(two, Skip) and "numa_node is -1" in two.reason
    assert "numa_bind={'node': N}" in two.fix


def test_differs_cpu_less_gpu_node_in_socket_mode(on_machine):
    """torch takes ``min()`` of each node's CPUs to find its socket, which fails on a
    CPU-less node (GB200's GPU memory nodes); ray-numa goes to the nearest node
    with CPUs and takes that node's socket."""
    on_machine("gb200")
    decision = plan_for(parse({"cpus": "socket"}), ["0"])
    assert format_cpulist(decision.cpus) == "0-71" and decision.cpu_nodes == (0,)
