"""The kernel's locality rules (issue 20 item 4), on fixture shapes and on real dumps.

Each rule is checked on the smallest fixture machine that shows it
(``tests/fixtures/machines.py``) and, where hwloc's corpus has the case, on that
machine's real ``/sys`` (``tests/fixtures/hwloc``, named per test). hwloc's
``hwloc/topology-linux.c`` is the reference for each rule; the kernel's for HMAT is
Documentation/admin-guide/mm/numaperf.rst.
"""
import json
from pathlib import Path

import pytest

from ray_numa.planning import plan_for
from ray_numa.options import parse
from ray_numa.policy import Plan, Skip
from ray_numa.topology import format_cpulist, machine_topology

from .fixtures import hwloc_corpus
from .fixtures.build import build_spec
from .fixtures.machines import MIXED


def plan(value, gpus=()):
    return plan_for(parse(value), [str(g) for g in gpus])


def cpus_of(decision):
    assert isinstance(decision, Plan), decision
    return format_cpulist(decision.cpus)


@pytest.fixture
def on_dump(on_machine, tmp_path_factory, monkeypatch):
    """``on_dump(name)`` points ray-numa at hwloc's real dump ``name`` (a fresh copy)."""
    def use(name: str) -> Path:
        root = hwloc_corpus.extract(name, tmp_path_factory.mktemp(name))
        on_machine("dgx-h100")            # clears the caches, as for any machine
        monkeypatch.setenv("RAY_NUMA_FIXTURE", str(root))
        return root
    return use


# -- 1. CPU-less memory nodes: HMAT initiators, then SLIT, then the device; ties say so

def test_hmat_initiators_name_the_socket_of_a_cpu_less_node(on_machine):
    """Nodes 2 and 3 are flat in SLIT (24 from both sockets); HMAT puts 2 on socket 0
    and 3 on socket 1. Before: both sockets' CPUs for either."""
    on_machine("hmat-cxl")
    d = plan(3)
    assert cpus_of(d) == "16-31" and d.cpu_nodes == (1,) and d.mem_nodes == (3,)
    assert any("node 3 has no CPUs: CPUs of node(s) 1, the initiators ACPI HMAT names" in n
               for n in d.notes)
    assert cpus_of(plan(2)) == "0-15"


def test_a_tie_nothing_breaks_is_a_skip_not_every_socket(on_machine):
    """Node 4: flat SLIT, no HMAT data, no device: which socket is unknown, so no
    binding (before: CPUs of both sockets, silently). Naming the CPUs still works."""
    on_machine("hmat-cxl")
    d = plan(4)
    assert isinstance(d, Skip) and not d.quiet
    assert "node 4 has no CPUs and is equally near nodes 0-1" in d.reason
    assert "'cpus': [...]" in d.fix
    named = plan({"node": 4, "cpus": [16, 17]})
    assert cpus_of(named) == "16-17" and named.mem_nodes == (4,)


def test_hmat_on_real_dump_fakeheteromemtiers(on_dump):
    """hwloc's ``fakeheteromemtiers`` (Qemu with HMAT): CPU-less nodes 4, 6, 8, 9 are
    20 from every node in SLIT; access1/initiators places 4 and 6 on node 1, 8 on
    node 0, 9 on node 2 (hwloc's lstopo shows the same). Before: CPUs 0-5 for each."""
    on_dump("fakeheteromemtiers")
    assert [cpus_of(plan(n)) for n in (4, 6, 8, 9)] == ["2-3", "2-3", "0-1", "4-5"]
    assert plan(8).mem_nodes == (8,)


def test_access1_before_access0_on_real_dump_fakememinitiators(on_dump):
    """hwloc's ``fakememinitiators-1np2c+1npp+gi``: node 4 is a generic initiator that
    access0 lists as nearest for nodes 5-7; access1 (CPU initiators, Linux 5.10+)
    names the CPU nodes, and hwloc's ``read_node_initiators`` reads access1 first."""
    on_dump("fakememinitiators-1np2c+1npp+gi")
    topo = machine_topology()
    assert [topo.initiators(n) for n in (5, 6, 7, 8, 10)] == \
        [(0,), (2,), (0, 2), (1,), (1, 3)]
    assert topo.initiators(0) == ()                  # a CPU node: empty access1


def test_memory_nodes_plans_on_real_dump_fakememinitiators(on_dump):
    """The plans for the CPU-less nodes of ``fakememinitiators-1np2c+1npp+gi``, whose
    node CPU sets are in hex ``cpumap`` only (read since w20a). Each matches the
    cpuset of the memory node's parent in hwloc 2.9's lstopo
    (``HWLOC_COMPONENTS=linux,stop HWLOC_FSROOT=<dump> lstopo --of xml -``):
    5 under 0x3, 6 under 0x30, 7 under 0x33, 8 under 0xc, 9 under 0xc0, 10 under 0xcc."""
    on_dump("fakememinitiators-1np2c+1npp+gi")
    got = {n: plan(n) for n in (5, 6, 7, 8, 9, 10)}
    assert {n: cpus_of(d) for n, d in got.items()} == {
        5: "0-1", 6: "4-5", 7: "0-1,4-5", 8: "2-3", 9: "6-7", 10: "2-3,6-7"}
    assert all(d.mem_nodes == (n,) for n, d in got.items())


# -- 2. A GPU whose NVML node has no CPUs: its own PCI locality; host memory there

def test_power9_gpu_memory_node_binds_to_the_gpus_own_socket(on_machine):
    """NVML reports the V100s' HBM nodes 250-255, 80 from both sockets. hwloc gives
    such a node the GPU's PCI ``local_cpus`` (and hides it on POWER: not memory for
    host allocations), so CPUs and memory go to the GPU's socket. Before: both."""
    on_machine("power9-v100")
    d = plan("auto", [0])
    assert cpus_of(d) == "0-87" and d.mem_nodes == (0,) and d.home == 0
    assert any("CPUs local to its GPU (PCI local_cpus)" in n for n in d.notes)
    d = plan("auto", [4])
    assert cpus_of(d) == "88-175" and d.mem_nodes == (8,)
    assert isinstance(plan({"span": "skip"}, [0, 1]), Plan)       # one socket: no span
    assert isinstance(plan({"span": "skip"}, [2, 3]), Skip)


def test_power9_on_real_dump_nvidiagpunumanodes(on_dump):
    """hwloc's ``nvidiagpunumanodes`` (POWER9 + 6 V100, CPUs trimmed to 0-15,88-103):
    the driver's numa_status names each GPU's node, the PCI functions have no
    numa_node, only ``local_cpus``. The NVML stand-in reports the same nodes. hwloc
    2.9's lstopo (HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES=1) gives nodes 253-255 CPUs
    0-15 and 250-252 CPUs 88-103, as here."""
    root = on_dump("nvidiagpunumanodes")
    gpus_dir = root / "proc/driver/nvidia/gpus"
    devices = [{"uuid": f"GPU-{i:08x}-0000-0000-0000-000000000000", "name": "Tesla V100",
                "bus_id": f"0000{bus}", "compute_capability": [7, 0],
                "numa_node": int((gpus_dir / bus / "numa_status").read_text().split()[1])}
               for i, bus in enumerate(sorted(p.name for p in gpus_dir.iterdir()))]
    (root / "nvml.json").write_text(json.dumps({"devices": devices}))
    got = {d["numa_node"]: plan("auto", [i]) for i, d in enumerate(devices)}
    assert {n: (cpus_of(p), p.mem_nodes) for n, p in got.items()} == {
        **{n: ("0-15", (0,)) for n in (253, 254, 255)},
        **{n: ("88-103", (8,)) for n in (250, 251, 252)}}


def _without_nvml(spec, tmp_path, monkeypatch, name):
    """The machine ``spec`` with NVML failing to load (nvmlInit: LIBRARY_NOT_FOUND),
    so ray-numa lists the GPUs from sysfs and the NVIDIA driver's files."""
    spec = json.loads(json.dumps(spec))
    spec["nodes"] = {int(k): v for k, v in spec["nodes"].items()}
    spec["nvml_error"] = "LIBRARY_NOT_FOUND"
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(spec, tmp_path / name)))
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


@pytest.mark.parametrize("name", ["gh200", "power9-v100"])
def test_same_plan_with_or_without_nvml(name, on_machine, tmp_path, monkeypatch):
    """Without NVML the GPU's memory node is the one the driver's numa_status names
    (NVML's nvmlDeviceGetNumaNodeId answers the same number; hwloc reads the file),
    and a PCI function without numa_node is placed by its local_cpus (hwloc's
    hwloc_linux_backend_get_pci_busid_cpuset). Before: GH200 skipped as a single-node
    machine, POWER9 said the GPU's node was unknown; with NVML both bind."""
    from ray_numa import gpus
    from .fixtures.machines import MACHINES
    on_machine(name)
    with_nvml = [plan("auto", [g]) for g in (0, 1)[:1 if name == "gh200" else 2]]
    _without_nvml(MACHINES[name], tmp_path, monkeypatch, name)
    gpus._discover.cache_clear()
    assert gpus.discover_gpus()[1].startswith("sysfs")
    without = [plan("auto", [g]) for g in (0, 1)[:len(with_nvml)]]
    assert [(cpus_of(p), p.mem_nodes, p.memory) for p in without] == \
        [(cpus_of(p), p.mem_nodes, p.memory) for p in with_nvml]
    assert cpus_of(without[0]) == ("0-71" if name == "gh200" else "0-87")


def test_pci_numa_node_missing_is_placed_by_local_cpus(on_machine, tmp_path, monkeypatch):
    """POWER9's PCI functions have no numa_node file, only local_cpus: the GPU's node
    is the one node its local_cpus holds (here as NVML would not say: an x86-style
    GPU, no numa_status). Local CPUs that are every CPU place nothing."""
    from ray_numa import gpus
    on_machine("mixed")
    spec = dict(MIXED, gpus=[dict(g, pci_numa_node=None,
                                  local_cpus=sorted(MIXED["nodes"][1]["cpus"]) if i == 1
                                  else [c for n in MIXED["nodes"].values() for c in n["cpus"]])
                             if i in (0, 1) else g for i, g in enumerate(MIXED["gpus"])])
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(spec, tmp_path / "mixed")))
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    topo = machine_topology()
    node_one = format_cpulist(topo.nodes[1].cpus)
    assert cpus_of(plan("auto", [1])) == node_one
    d = plan("auto", [0])
    assert isinstance(d, Skip) and "sysfs numa_node is missing" in d.reason
    sys_root = Path(str(tmp_path / "mixed")) / "sys"
    bus = spec["gpus"][0]["bus_id"][4:].lower()
    assert "local_cpus do not place it" in gpus.pci_numa_node_read(bus, sys_root, topo.nodes)[1]


def test_device_tie_breaker_needs_most_of_a_node(on_machine, tmp_path, monkeypatch):
    """A GPU whose local_cpus are socket 0 plus one CPU of socket 1 (0-88 where the
    sockets are 0-87 and 88-175) is on socket 0. Before: both sockets were bound,
    since every node sharing one CPU with local_cpus counted."""
    from .fixtures.machines import POWER9_V100, _r
    on_machine("power9-v100")
    spec = json.loads(json.dumps(POWER9_V100))
    spec["nodes"] = {int(k): v for k, v in spec["nodes"].items()}
    spec["gpus"][0]["local_cpus"] = _r(0, 88)
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(spec, tmp_path / "p9")))
    d = plan("auto", [0])
    assert cpus_of(d) == "0-87" and d.cpu_nodes == (0,) and d.mem_nodes == (0,)
    spec["gpus"][0]["local_cpus"] = _r(60, 120)          # half of neither: a tie
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(spec, tmp_path / "p9b")))
    from ray_numa import topology
    topology._cached_topology.cache_clear()
    d = plan("auto", [0])
    assert isinstance(d, Skip) and "equally near nodes 0,8" in d.reason


def test_notes_say_which_rule_and_file_chose_the_cpus(on_machine, tmp_path, monkeypatch):
    """The DEVICE note names the file that placed the GPU (local_cpus, or numa_node
    where the function has no local_cpus); a cpuset that disallows the CPUs HMAT
    chose says HMAT chose them. Before: always "(PCI local_cpus)", and a bare "none
    of the CPUs chosen"."""
    from ray_numa import topology
    from .fixtures.machines import POWER9_V100, _r
    on_machine("power9-v100")
    spec = json.loads(json.dumps(POWER9_V100))
    spec["nodes"] = {int(k): v for k, v in spec["nodes"].items()}
    spec["gpus"] = [dict({k: v for k, v in g.items() if k != "local_cpus"},
                         pci_numa_node=0 if i < 3 else 8) for i, g in enumerate(spec["gpus"])]
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(spec, tmp_path / "p9")))
    d = plan("auto", [4])
    assert cpus_of(d) == "88-175"
    assert any("CPUs local to its GPU (PCI numa_node)" in n for n in d.notes), d.notes
    hmat = {"nodes": {0: {"cpus": _r(0, 15), "mem_gb": 64}, 1: {"cpus": _r(16, 31), "mem_gb": 64},
                      2: {"cpus": [], "mem_gb": 128}},
            "distances": [[10, 21, 24], [21, 10, 24], [24, 24, 10]],
            "smt": {"cores_per_package": 16, "packages": 2, "threads": 1}, "l3_cores": 8,
            "initiators": {2: [1]}, "status": {"cpus": "0-15", "mems": "0-2"}, "gpus": []}
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(hmat, tmp_path / "hmat")))
    topology._cached_topology.cache_clear()
    skip = plan(2)
    assert isinstance(skip, Skip) and "16-31: node 2 has no CPUs: CPUs of node(s) 1, the " \
        "initiators ACPI HMAT names) are allowed" in skip.reason


# -- 3. Unknown package: socket mode falls back to the node, with a note

def test_unknown_package_socket_mode_is_the_node_with_a_note(on_machine):
    """POWER7 firmware writes physical_package_id -1 for every CPU: before, one
    "package -1" held every CPU and socket mode bound all 8 nodes."""
    on_machine("power7")
    d = plan({"cpus": "socket"}, [1])
    assert cpus_of(d) == "128-159" and d.cpu_nodes == (8,)
    assert any("socket of node(s) 8 is unknown" in n and "CPUs of the node instead" in n
               for n in d.notes)


def test_power7_real_dump_has_no_package_ids(on_dump):
    """hwloc's ``256ppc-8n8s4t``: all 256 CPUs say -1 (before: package -1)."""
    root = on_dump("256ppc-8n8s4t")
    topo = machine_topology()
    cpus = [int(p.name[3:]) for p in (root / "sys/devices/system/cpu").glob("cpu[0-9]*")]
    assert len(cpus) == 256 and {topo.package(c) for c in cpus} == {None}


# -- 4. A missing PCI numa_node is reported as missing

def test_missing_numa_node_says_missing(on_machine, tmp_path, monkeypatch):
    """The MIXED server with GPU 1's numa_node file absent (as on hwloc's POWER9
    dump): before, the Skip said "numa_node is -1"."""
    on_machine("mixed")
    missing = dict(MIXED, gpus=[dict(g, pci_numa_node=None) if i == 1 else g
                                for i, g in enumerate(MIXED["gpus"])])
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(missing, tmp_path / "mixed")))
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    d = plan("auto", [1])
    assert isinstance(d, Skip) and "sysfs numa_node is missing and NVML has none" in d.reason


# -- 5. One node with CPUs: nothing to bind, whatever memory-only nodes exist

def test_one_socket_with_cxl_skips_like_one_socket_without(on_machine):
    """Before: "auto" bound memory to node 0, cutting the worker off the CXL node."""
    on_machine("one-socket-cxl")
    d = plan("auto", [0])
    assert isinstance(d, Skip) and "single NUMA node with CPUs" in d.reason
    assert "node(s) 1 hold memory only" in d.reason
    assert isinstance(plan({"cpus": "socket"}, [1]), Skip)


def test_one_socket_with_cxl_split_modes_keep_the_memory_asked(on_machine):
    """exclusive still splits the one node (as on a one-node workstation). Memory
    "bind" becomes "preferred" on the CPU node (local pages, and the CXL node still
    reached when node 0 fills), with a note; "preferred" and "interleave" are kept as
    asked; strict keeps "bind" (strict never weakens a policy; BindOptions cannot tell
    an explicit "bind" from the default). Before: memory "none", whatever was asked,
    also under strict."""
    on_machine("one-socket-cxl")
    d = plan({"cpus": "exclusive"}, [1])
    assert cpus_of(d) == "8-15,24-31" and d.memory == "preferred" and d.mem_nodes == (0,)
    assert any("memory-only node(s) 1" in n and '"preferred" instead' in n for n in d.notes)
    for memory in ("preferred", "interleave"):
        kept = plan({"cpus": "core-complex", "memory": memory}, [1])
        assert kept.memory == memory and kept.mem_nodes == (0,)
    strict = plan({"cpus": "exclusive", "strict": True}, [1])
    assert strict.memory == "bind" and strict.mem_nodes == (0,)
    assert any("kept, as strict asks" in n for n in strict.notes)
    assert plan({"cpus": "exclusive", "memory": "none"}, [1]).memory == "none"
    explicit = plan(0)                                   # a named node still binds
    assert explicit.mem_nodes == (0,) and explicit.memory == "bind"


def test_gh200_gpu_memory_node_is_planned_as_before(on_machine):
    """GH200 also has one node with CPUs, but the GPU's own node (NVML: HBM node 1)
    is memory-only, so it is planned as on GB200: the Grace's CPUs and memory."""
    on_machine("gh200")
    d = plan("auto", [0])
    assert cpus_of(d) == "0-71" and d.mem_nodes == (0,) and d.memory == "bind"


# -- 6. core-complex without cache information falls back to exclusive

def test_core_complex_without_cache_info_is_exclusive_with_a_note(on_machine):
    """A VM without cpuN/cache: before, each GPU got one CPU (a one-CPU "L3 group")."""
    on_machine("vm-no-cache")
    for gpu in range(4):
        cc, ex = plan({"cpus": "core-complex"}, [gpu]), plan({"cpus": "exclusive"}, [gpu])
        assert cc.cpus == ex.cpus and len(cc.cpus) == 8
        assert any('"core-complex": sysfs has no cache information' in n
                   and '"exclusive" instead' in n for n in cc.notes)
    assert cpus_of(plan({"cpus": "core-complex"}, [1])) == "8-15"


def test_fallback_notes_reach_the_binding_record(on_machine):
    """The note is in what ``bind_current_process`` returns (and the ledger)."""
    import ray_numa
    on_machine("vm-no-cache")
    binding = ray_numa.bind_current_process(2, options={"cpus": "core-complex"})
    assert binding.status == "bound" and binding.cpus == "16-23"
    assert any('"exclusive" instead' in n for n in binding.notes)


def test_a_tie_within_one_socket_binds_that_socket(on_machine, tmp_path, monkeypatch):
    """A CPU-less node equally near both nodes of socket 0 (NPS2/SNC2) and farther
    from socket 1: those two nodes are its socket, not an undecided tie."""
    from .fixtures.machines import _r
    on_machine("dgx-h100")
    spec = {"nodes": {0: {"cpus": _r(0, 7), "mem_gb": 64}, 1: {"cpus": _r(8, 15), "mem_gb": 64},
                      2: {"cpus": _r(16, 23), "mem_gb": 64}, 3: {"cpus": _r(24, 31), "mem_gb": 64},
                      4: {"cpus": [], "mem_gb": 256}},
            "distances": [[10, 12, 32, 32, 17], [12, 10, 32, 32, 17], [32, 32, 10, 12, 40],
                          [32, 32, 12, 10, 40], [17, 17, 40, 40, 10]],
            "smt": {"cores_per_package": 16, "packages": 2, "threads": 1}, "l3_cores": 8,
            "gpus": []}
    monkeypatch.setenv("RAY_NUMA_FIXTURE", str(build_spec(spec, tmp_path / "snc2")))
    d = plan(4)
    assert cpus_of(d) == "0-15" and d.cpu_nodes == (0, 1) and d.mem_nodes == (4,)
    assert any("node 4 has no CPUs: CPUs of node(s) 0-1, all equally near by distance "
               "(SLIT), on one socket" in n for n in d.notes)      # before: no note


def test_tie_breakers_are_read_only_where_a_tie_needs_them(on_machine):
    """GB200's HBM nodes have one nearest Grace: planning reads no driver or PCI
    locality file. POWER9's tie reads the driver's numa_status and the GPU's
    local_cpulist, nothing per CPU."""
    from .test_topology import files_opened_to_plan
    on_machine("gb200")
    files_opened_to_plan("auto", ["0"])                      # imports out of the way
    assert not [f for f in files_opened_to_plan("auto", ["0"])
                if "/proc/" in f or "local_cpu" in f]
    on_machine("power9-v100")
    files = files_opened_to_plan("auto", ["3"])
    assert any(f.endswith("/numa_status") for f in files)
    assert any(f.endswith("0007:00:00.0/local_cpus") for f in files)
    assert not [f for f in files if "/cpu/cpu" in f and "physical_package_id" not in f]
