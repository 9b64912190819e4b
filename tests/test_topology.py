"""Topology and allowed-resource discovery from fixture trees and this kernel."""
import dataclasses
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ray_numa import gpus, topology
from ray_numa.cpusets import format_cpulist, parse_cpulist
from ray_numa.topology import read_topology


def test_cpulist_round_trip():
    assert parse_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert format_cpulist({11, 0, 1, 2, 3, 8, 10}) == "0-3,8,10-11"
    assert parse_cpulist("") == frozenset()


def test_dgx_nodes_distances_and_smt(machine_tree):
    topo = read_topology(machine_tree("dgx-h100") / "sys")
    assert sorted(topo.nodes) == [0, 1]
    assert format_cpulist(topo.nodes[1].cpus) == "56-111,168-223"
    assert topo.distance(0, 1) == 21 and topo.distance(1, 1) == 10
    assert topo.nodes[0].mem_kb == 1024 * 1024 * 1024
    assert topo.siblings(5) == topo.siblings(117) == {5, 117}
    assert topo.package(60) == 1 and topo.package(5) == 0


def test_gb200_cpu_less_nodes_resolve_to_nearest_grace(machine_tree):
    topo = read_topology(machine_tree("gb200") / "sys")
    assert len(topo.nodes) == 34
    assert topo.nodes[2].cpus == frozenset() and topo.nodes[2].mem_kb > 0
    assert topo.nodes[3].mem_kb == 0
    has_cpus = lambda n: bool(n.cpus)  # noqa: E731
    assert topo.nearest(2, has_cpus) == (0,)
    assert topo.nearest(26, has_cpus) == (1,)


def test_nps4_packages_and_l3_groups(machine_tree):
    topo = read_topology(machine_tree("amd-nps4") / "sys")
    assert topo.nodes_of_packages(topo.packages_of([1])) == (0, 1, 2, 3)
    assert format_cpulist(topo.llc(26)) == "24-31,216-223"


def test_cpuset_container_status_limits_allowed(on_machine):
    on_machine("cpuset-container")
    allowed = topology.process_allowed(topology.machine_topology())
    assert format_cpulist(allowed.cpus) == "8-11,60-61,120-123,172-173"
    assert allowed.mems == {0, 1}


def test_this_kernel_matches_proc_and_affinity():
    topo = read_topology(Path("/sys"))
    assert topo.online >= set(os.sched_getaffinity(0))
    assert all(c in topo.siblings(c) and c in topo.llc(c) for c in topo.online)
    allowed = topology.process_allowed(topo)      # this process: /proc/self/status, affinity
    assert allowed.cpus == frozenset(os.sched_getaffinity(0))
    assert allowed.mems and allowed.mems <= set(topo.nodes)


def test_kernel_without_numa_dir_is_one_node(tmp_path):
    (tmp_path / "devices/system/cpu").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/online").write_text("0-3\n")
    topo = read_topology(tmp_path)
    assert list(topo.nodes) == [0] and topo.nodes[0].cpus == {0, 1, 2, 3}


def test_machine_topology_is_cached(on_machine):
    on_machine("dgx-h100")
    assert topology.machine_topology() is topology.machine_topology()


def _cpus_read(files):
    return {int(m.group(1)) for f in files for m in [re.search(r"/cpu/cpu(\d+)/", f)] if m}


def files_opened_to_plan(numa_bind, gpu_ids):
    """The files a cold process opens to plan ``numa_bind`` for ``gpu_ids``: a count
    that does not depend on load."""
    from ray_numa import gpus, topology
    from ray_numa.planning import plan_for
    from ray_numa.options import parse
    topology._cached_topology.cache_clear()
    gpus._discover.cache_clear()
    _, files = topology.opened_files(lambda: plan_for(parse(numa_bind), list(gpu_ids)))
    return files


def test_binding_one_gpu_opens_only_what_its_mode_needs(on_machine):
    """Issue 11: node mode on the DGX H100 needs node lists, distances, meminfo and
    the GPUs' PCI nodes (it opened 2929 files when every CPU was read up front);
    the CPU modes read per-CPU files only for the CPUs of the GPU's node."""
    root = str(on_machine("dgx-h100"))
    files_opened_to_plan("auto", ["0"])                      # imports out of the way
    node = files_opened_to_plan("auto", ["0"])
    assert len(node) <= 40 and all(f.startswith(root) for f in node)
    assert not _cpus_read(node)
    # socket: one CPU per node says which socket the node is on
    assert _cpus_read(files_opened_to_plan({"cpus": "socket"}, ["0"])) == {0, 56}
    node0 = set(range(56)) | set(range(112, 168))
    for mode, most in (("exclusive", 56), ("core-complex", 8)):
        files = files_opened_to_plan({"cpus": mode}, ["0"])
        read = _cpus_read(files)
        assert read and read <= node0, mode            # only the GPU's node
        # + 2 directories: bus/pci/drivers/nvidia (the split modes count every GPU of
        # the machine) and a CPU's cache/ (core-complex). Counted since directory reads
        # are (os.listdir/os.scandir): node 10 files, exclusive 73 -> 74, core-complex
        # 26 -> 28 on this machine
        assert len(files) <= len(node) + most * 2 + 2, (mode, len(files))


def test_directory_reads_are_counted(on_machine):
    """opened_files sees os.listdir and os.scandir (Path.iterdir, glob) as well as
    open: before, a directory walk cost nothing in the hot-path file counts."""
    import os
    root = on_machine("dgx-h100")
    node_dir = root / "sys/devices/system/node"
    _, files = topology.opened_files(lambda: (os.listdir(node_dir), list(node_dir.iterdir()),
                                              list(os.scandir(node_dir))))
    assert files.count(str(node_dir)) == 3


def test_a_gpu_workers_first_bind_compiles_one_new_per_value_class():
    """Issue 11: every GPU worker imports the binding path at its first assignment,
    and building a class can compile source at runtime: on Python 3.11 a frozen
    dataclass compiles each generated method (~4.4 million instructions per class), a
    ``typing.NamedTuple`` compiles each string annotation into a ForwardRef (~1.3
    million), a ``collections.namedtuple`` compiles only its ``__new__`` (~0.5
    million). So the values (BindOptions, which torch makes a frozen dataclass;
    Binding, a typed result like psutil's; Plan, Skip, Target, Applied) are namedtuple
    subclasses whose annotations document their fields, and Topology (a reader with a
    cache) is a plain class. Counted with the interpreter's own "compile" audit event,
    in a process that has imported Ray as a worker has."""
    code = ("import json, sys, ray._private.worker\n"
            "sources = []\n"
            "sys.addaudithook(lambda event, args: sources.append(args[1])\n"
            "                 if event == 'compile' and args[1] == '<string>' else None)\n"
            "from ray_numa import worker\n"
            "from ray_numa.binding import process_binder\n"
            "from ray_numa.options import parse\n"
            "import ray_numa.follow, ray_numa.gpu_table, ray_numa.planning  # planning here\n"
            "print(json.dumps([len(sources),\n"
            "                  sorted(m for m in sys.modules if m.startswith('ray_numa'))]))\n")
    compiled, loaded = json.loads(subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert {"ray_numa.policy", "ray_numa.decision", "ray_numa.apply"} <= set(loaded)
    classes = [cls for name in loaded for cls in vars(importlib.import_module(name)).values()
               if inspect.isclass(cls) and cls.__module__ == name]
    assert not [cls for cls in classes if dataclasses.is_dataclass(cls)]
    values = [cls for cls in classes if issubclass(cls, tuple)]
    assert {cls.__name__ for cls in values} >= {"BindOptions", "Binding", "Plan", "Skip",
                                                "Target", "Applied"}
    assert compiled == len(values)          # namedtuple's __new__, once per class
    for cls in values + [topology.NumaNode, topology.Allowed, gpus.Gpu]:
        assert cls.__bases__[0].__bases__ == (tuple,), cls     # a namedtuple subclass
        assert tuple(cls.__annotations__) == cls._fields, cls  # documents every field
        assert cls.__slots__ == (), cls                         # no per-instance dict
