"""Run inside the VM tier's guest kernel (RAY_NUMA_IN_VM=1); skipped elsewhere.

Real multi-node kernel, real sysfs, a PCI function on node 1 standing in for a GPU
that the fake NVML (``tests/vm/nvml``: only ``nvml.json``) names by its bus id, so the
GPU's node comes from the guest kernel. Pages are counted in /proc/self/numa_maps.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_numa.topology import format_cpulist, read_topology
from tests.inspect_proc import share_on
from tests.procs import ROOT, child_report

pytestmark = pytest.mark.skipif(os.environ.get("RAY_NUMA_IN_VM") != "1",
                                reason="runs inside the VM tier (tests/vm)")
BUS = "0000:81:00.0"
TOPO = read_topology(Path("/sys"))


@pytest.fixture(scope="module")
def nvml_fixture():
    return {"RAY_NUMA_FIXTURE": str(ROOT / "tests" / "vm" / "nvml")}


def layout():
    return "two-node" if os.path.exists(f"/sys/bus/pci/devices/{BUS}") else "four-node"


two_node = pytest.mark.skipif("layout() != 'two-node'")
four_node = pytest.mark.skipif("layout() != 'four-node'")

ALLOC_AFTER = '''
from ray_numa import bind_current_process
b = bind_current_process({args})
buf, addr = touch_buffer(256)
report(binding=b.as_dict(), pages=node_pages(addr), show=numactl_show())
'''


@two_node
def test_gpu_standin_node_comes_from_the_guest_kernel():
    assert open(f"/sys/bus/pci/devices/{BUS}/numa_node").read().strip() == "1"
    assert sorted(TOPO.nodes) == [0, 1]


@two_node
def test_bind_current_process_puts_new_memory_on_the_gpus_node(nvml_fixture):
    r = child_report(ALLOC_AFTER.format(args="gpu=0"), env=nvml_fixture)
    node1 = format_cpulist(TOPO.nodes[1].cpus)
    assert r["binding"]["status"] == "bound" and r["binding"]["backend"] == "syscall"
    assert r["cpus_allowed"] == node1 and r["thread_cpus"] == [node1]
    assert r["mempolicy"] == ["bind", [1]] and r["show"]["membind"] == "1"
    pages = {int(k): v for k, v in r["pages"].items()}
    assert pages.get(1, 0) / sum(pages.values()) >= 0.99, pages


@two_node
@pytest.mark.parametrize("migrate", [True, False])
def test_pages_touched_before_an_in_process_bind_are_migrated(nvml_fixture, migrate):
    r = child_report(f'''
        from ray_numa import syscalls
        syscalls.set_mempolicy("bind", [0])     # first touch on node 0 (the affinity
        buf, addr = touch_buffer(256)           # stays open: binding never widens it)
        before = node_pages(addr)
        from ray_numa import bind_current_process
        b = bind_current_process(gpu=0, options={{"migrate": {migrate}}})
        report(binding=b.as_dict(), before=before, after=node_pages(addr))
    ''', env=nvml_fixture)
    assert r["binding"]["status"] == "bound" and r["mempolicy"] == ["bind", [1]]
    before = {int(k): v for k, v in r["before"].items()}
    after = {int(k): v for k, v in r["after"].items()}
    assert before.get(0, 0) / sum(before.values()) >= 0.99, before
    share1 = after.get(1, 0) / sum(after.values())
    assert (share1 >= 0.99) if migrate else (share1 <= 0.01), after


@two_node
def test_exec_binds_the_command_to_the_gpus_node(nvml_fixture):
    """... and with ``--nic auto`` points it at the software RoCE device beside its GPU
    (tests/vm/soft_roce.py), the real kernel's sysfs and /dev/infiniband deciding."""
    code = ("import os; from tests.inspect_proc import *; buf, addr = touch_buffer(256); "
            "report(pages=node_pages(addr), show=numactl_show(), env={k: os.environ.get(k) "
            "for k in ('UCX_NET_DEVICES', 'NVSHMEM_HCA_LIST', 'UCCL_P2P_RDMA_DEV', "
            "'NCCL_IB_HCA')})")
    proc = subprocess.run([sys.executable, "-m", "ray_numa.cli", "exec", "--gpu", "0",
                           "--nic", "auto", "--", sys.executable, "-c", code],
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **nvml_fixture),
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["cpus_allowed"] == format_cpulist(TOPO.nodes[1].cpus)
    assert r["show"]["policy"] == "bind" and r["show"]["membind"] == "1"
    pages = {int(k): v for k, v in r["pages"].items()}
    assert pages.get(1, 0) / sum(pages.values()) >= 0.99, pages
    assert r["env"] == {"UCX_NET_DEVICES": "rxe_n1:1", "NVSHMEM_HCA_LIST": "rxe_n1:1",
                        "UCCL_P2P_RDMA_DEV": "rxe_n1", "NCCL_IB_HCA": None}, r["env"]


@two_node
def test_soft_roce_nics_are_read_from_the_guest_kernel(nvml_fixture):
    """rdma_rxe's devices as this kernel registers them (no PCI parent) are placed at
    their netdevs' functions; ``ray-numa show`` gives GPU 0 the one on its host bridge."""
    from ray_numa.nics import pci_place, read_nics
    from ray_numa.pcipath import matrix
    nics = read_nics(Path("/sys"))
    assert [(n.name, n.bdf, n.place.numa_node) for n in nics] == [
        ("rxe_n0", "0000:41:00.0", 0), ("rxe_n1", "0000:82:00.0", 1)], nics
    for n in nics:
        assert os.path.realpath("/sys/class/infiniband/" + n.name).startswith(
            "/sys/devices/virtual/infiniband/")                   # parentless, really
        assert n.bdf in os.path.realpath(f"/sys/class/net/{n.via}/device")
        assert [(p.state, p.link_layer) for p in n.ports] == [("ACTIVE", "Ethernet")]
        os.close(os.open(f"/dev/infiniband/{n.verbs}", os.O_RDWR))
    assert matrix([(0, pci_place(Path("/sys"), BUS))], nics) == [["SYS", "PHB"]]
    proc = subprocess.run([sys.executable, "-m", "ray_numa.cli", "show", "--json"],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **nvml_fixture))
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)["nics"]
    assert shown["matrix"]["0"] == ["SYS", "PHB"], shown
    assert shown["chosen"]["0"] == {"nets": ["rxe_n1:1"], "path": "PHB"}, shown


def _node(pred):
    return next(n.id for n in TOPO.nodes.values() if pred(n))


@four_node
def test_cpu_less_node_binds_cpus_nearby_and_memory_on_it():
    cpuless = _node(lambda n: not n.cpus and n.mem_kb > 0)
    r = child_report(ALLOC_AFTER.format(args=f"node={cpuless}"))
    b = r["binding"]
    nearest = TOPO.nearest(cpuless, lambda n: bool(n.cpus))
    assert b["cpu_nodes"] == list(nearest) and b["mem_nodes"] == [cpuless]
    assert r["cpus_allowed"] == format_cpulist(TOPO.nodes[nearest[0]].cpus)
    pages = {int(k): v for k, v in r["pages"].items()}
    assert pages.get(cpuless, 0) / sum(pages.values()) >= 0.99, pages


@four_node
def test_memory_less_node_binds_memory_to_the_nearest_node_with_memory():
    memless = _node(lambda n: n.cpus and n.mem_kb == 0)
    failed = subprocess.run(["numactl", f"--membind={memless}", "true"], capture_output=True)
    assert failed.returncode != 0          # what a naive --membind would hit
    r = child_report(ALLOC_AFTER.format(args=f"node={memless}"))
    b = r["binding"]
    target = TOPO.nearest(memless, lambda n: n.mem_kb > 0)
    assert b["status"] == "bound" and b["mem_nodes"] == list(target)
    assert r["cpus_allowed"] == format_cpulist(TOPO.nodes[memless].cpus)
    pages = {int(k): v for k, v in r["pages"].items()}
    assert sum(pages.get(t, 0) for t in target) / sum(pages.values()) >= 0.99, pages


SHM_HOLDER = r'''
import mmap, os, sys
from ray_numa import syscalls
syscalls.set_mempolicy("bind", [0])                  # this process's pages: node 0
fd = os.open("/dev/shm/ray-numa-vm-shared", os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 64 << 20)
shared = mmap.mmap(fd, 64 << 20, mmap.MAP_SHARED)
shared.write(b"\1" * (64 << 20))
print("ready", flush=True)
sys.stdin.readline()
'''


@two_node
def test_binding_moves_the_workers_own_pages_not_pages_it_shares(nvml_fixture):
    """Issue 21.2: as root (CAP_SYS_NICE), migrate_pages(2) moved pages "shared with
    another process" too; the 64 MiB /dev/shm mapping of another process must stay on
    node 0 while the worker's private buffer moves to the GPU's node 1. mbind(2):
    MPOL_MF_MOVE moves only pages this process alone maps."""
    holder = subprocess.Popen([sys.executable, "-c", SHM_HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "ready"
        r = child_report('''
            import ctypes, mmap
            from ray_numa import syscalls
            syscalls.set_mempolicy("bind", [0])
            own, own_addr = touch_buffer(64)                 # private, first touch node 0
            fd = os.open("/dev/shm/ray-numa-vm-shared", os.O_RDWR)
            shared = mmap.mmap(fd, 64 << 20, mmap.MAP_SHARED)
            shared_addr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
            total = sum(shared[i] for i in range(0, 64 << 20, 4096))  # map every page
            before = dict(own=node_pages(own_addr), shared=node_pages(shared_addr))
            from ray_numa import bind_current_process
            b = bind_current_process(gpu=0)
            report(binding=b.as_dict(), before=before, total=total,
                   after=dict(own=node_pages(own_addr), shared=node_pages(shared_addr)))
        ''', env=nvml_fixture)
        holder_pages = open(f"/proc/{holder.pid}/numa_maps").read()
    finally:
        holder.communicate("done\n", timeout=60)
        os.unlink("/dev/shm/ray-numa-vm-shared")
    print(f"VM_OWN_PAGES before {r['before']} after {r['after']}")
    assert r["binding"]["status"] == "bound" and r["mempolicy"] == ["bind", [1]]
    assert r["total"] == 16384                       # every shared page was mapped
    pages = {k: {int(n): c for n, c in v.items()} for k, v in r["after"].items()}
    before = {k: {int(n): c for n, c in v.items()} for k, v in r["before"].items()}
    assert share_on(before["own"], 0) >= 0.99 and share_on(before["shared"], 0) >= 0.99
    assert share_on(pages["own"], 1) >= 0.99, pages      # the worker's own: moved
    assert share_on(pages["shared"], 0) >= 0.99, pages   # the other process's: stayed
    line = next(l for l in holder_pages.splitlines() if "ray-numa-vm-shared" in l)
    assert "N0=16384" in line and "N1=" not in line, line
