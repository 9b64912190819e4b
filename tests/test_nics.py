"""RDMA NICs from sysfs, GPU-to-NIC classes and NCCL's per-GPU NIC choice.

The rule cases transcribe NVIDIA/nccl (commit 5067397, 2026-06): ``src/graph/xml.cc``
``ncclTopoGetXmlFromSys`` (a PCI node per switch, walking the sysfs path two levels
at a time), ``src/graph/paths.cc`` ``ncclTopoSetPaths`` (PIX/PXB/PHB/SYS path
types), ``src/graph/topo.cc`` ``ncclTopoGetLocal`` and ``ncclTopoGetLocalNetType``
(best NICs per GPU; ``DIVUP(nets, gpus)`` each, first at ``dev % gpus``,
``mirrorBits`` when the NIC count is a power of two).
"""
import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from ray_numa.nics import PciPlace, Port, RdmaNic, bdf_order, pci_place, read_nics
from ray_numa.pcipath import _mirror_bits, choose, compute_nets, matrix, path_class
from tests.fixtures.build import build_spec
from tests.fixtures.machines import MACHINES, _nic


def _place(switches=(), host="pci0000:00", numa=0, bdf="0000:99:00.0"):
    return PciPlace(bdf=bdf, host_bridge=host, switches=tuple(switches), numa_node=numa)


# (GPU place, NIC place, class) -- nvidia-smi's names, NCCL's ncclTopoSetPaths types
RULES = [
    # one switch node on the path: GPU->PCI and PCI->NIC links are both PATH_PIX
    (_place(["s1"]), _place(["s1"]), "PIX"),
    # "if (node->type == PCI && remNode->type == PCI) newType = PATH_PXB"
    (_place(["s2", "s1"]), _place(["s1"]), "PXB"),
    (_place(["s2", "s1"]), _place(["s3", "s1"]), "PXB"),
    # a path through the CPU node: PATH_PHB (same host bridge: nvidia-smi's PHB) ...
    (_place(["s1"]), _place(["s2"]), "PHB"),
    (_place([]), _place([]), "PHB"),
    # ... and other host bridges of the same NUMA node: NCCL's PHB, nvidia-smi's NODE
    (_place(["s1"], host="pci0000:15"), _place([], host="pci0000:27"), "NODE"),
    # CPU-CPU link LINK_SYS: another NUMA node
    (_place([], host="pci0000:15", numa=0), _place([], host="pci0000:97", numa=1), "SYS"),
    # numa_node -1 on both: NCCL makes one CPU node "numaid -1" for both
    (_place([], host="pci0000:15", numa=-1), _place([], host="pci0000:97", numa=-1), "NODE"),
    (_place([], host="pci0000:15", numa=-1), _place([], host="pci0000:97", numa=0), "SYS"),
]


@pytest.mark.parametrize("gpu,nic,expected", RULES)
def test_path_classes_follow_ncclTopoSetPaths(gpu, nic, expected):
    assert path_class(gpu, nic) == expected
    assert path_class(nic, gpu) == expected


def test_mirror_bits_as_nccl():
    # mirrorBits(val, pow2) reverses the log2(pow2) low bits
    assert [_mirror_bits(v, 4) for v in range(4)] == [0, 2, 1, 3]
    assert [_mirror_bits(v, 2) for v in range(4)] == [0, 1, 0, 1]
    assert _mirror_bits(5, 1) == 0 and _mirror_bits(6, 8) == 3


def test_pci_place_walks_like_nccl(tmp_path):
    """Root port, switch upstream, switch downstream, device: NCCL's parent of the
    device is the upstream port (two levels up); the root port is skipped."""
    chain = "pci0000:15/0000:15:01.0/0000:16:00.0/0000:17:00.0/0000:18:00.0"
    (tmp_path / "devices" / chain).mkdir(parents=True)
    (tmp_path / "devices" / chain / "numa_node").write_text("1\n")
    (tmp_path / "bus/pci/devices").mkdir(parents=True)
    os.symlink(f"../../../devices/{chain}", tmp_path / "bus/pci/devices/0000:18:00.0")
    assert pci_place(tmp_path, "0000:18:00.0") == PciPlace(
        "0000:18:00.0", "pci0000:15", ("0000:16:00.0",), 1)
    assert pci_place(tmp_path, "0000:ff:00.0") is None


def _nets(tree, machine):
    return _nets_at(tree(machine))


def _nets_at(root):
    sys_root = root / "sys"
    nvml = json.loads((root / "nvml.json").read_text())["devices"]
    bdfs = sorted(g["bus_id"][4:].lower() for g in nvml)
    places = [(i, pci_place(sys_root, b)) for i, b in enumerate(bdfs)]
    nics = read_nics(sys_root)
    return places, nics, choose(places, compute_nets(nics))


def test_dgx_h100_each_gpu_gets_its_switch_nic(machine_tree):
    """DGX H100 User Guide, Table 6: GPU 0-7 -> mlx5_0,3,4,5,6,9,10,11 (PIX); the
    storage cards (mlx5_1/2, mlx5_7/8, on the host bridges) are never chosen."""
    places, nics, chosen = _nets(machine_tree, "dgx-h100-net")
    assert [chosen[g].nets for g in range(8)] == [
        (f"mlx5_{n}:1",) for n in (0, 3, 4, 5, 6, 9, 10, 11)]
    assert {c.path for c in chosen.values()} == {"PIX"}
    rows = matrix(places, nics)
    names = [n.name for n in nics]
    assert rows[0][names.index("mlx5_0")] == "PIX"
    assert rows[0][names.index("mlx5_1")] == "NODE"     # storage, socket 0
    assert rows[0][names.index("mlx5_6")] == "SYS"      # GPU 4's NIC, socket 1
    assert rows[7][names.index("mlx5_8")] == "NODE"
    nic0 = next(n for n in nics if n.name == "mlx5_0")
    assert nic0.netdevs == ("ibp24s0",) and nic0.ports[0].rate_gbps == 400.0


def test_gb200_tray_gpus_spread_over_their_graces_nics(machine_tree):
    """Two GPUs share two NODE NICs per Grace: DIVUP(2, 2) = 1 each, first at
    dev % 2, mirrored (2 is a power of two). BlueField-3 Ethernet ports are out:
    the machine has an InfiniBand fabric."""
    _, _, chosen = _nets(machine_tree, "gb200-net")
    assert [chosen[g].nets for g in range(4)] == [
        ("mlx5_0:1",), ("mlx5_1:1",), ("mlx5_4:1",), ("mlx5_5:1",)]
    assert {c.path for c in chosen.values()} == {"NODE"}


def test_two_nics_on_socket_0_serve_every_gpu(machine_tree):
    """Four GPUs share two NODE NICs: one each, dev % 4 mirrored over 2 -> 0,1,0,1;
    socket 1's GPUs reach them only across sockets (SYS), with the same spread
    (ncclTopoGetLocal from the NIC finds socket 0's four GPUs). The down port of
    mlx5_2 is never chosen."""
    _, nics, chosen = _nets(machine_tree, "socket0-nics")
    assert [chosen[g].nets[0] for g in range(8)] == ["mlx5_0:1", "mlx5_1:1"] * 4
    assert [chosen[g].path for g in range(8)] == ["NODE"] * 4 + ["SYS"] * 4
    assert [n.name for n in compute_nets(nics)] == ["mlx5_0:1", "mlx5_1:1"]


def test_one_gpu_with_two_switch_nics_gets_both_and_two_gpus_one_each():
    """ncclTopoGetLocalNetType: netsPerGpu = DIVUP(localNetCount, localGpuCount)."""
    from ray_numa.nics import Port, RdmaNic
    port = Port(1, "ACTIVE", "InfiniBand", 400.0)
    nics = [RdmaNic(f"mlx5_{i}", f"0000:0{i}:00.0", (port,), (), _place(["sw"]))
            for i in range(2)]
    nets = compute_nets(nics)
    assert choose([(0, _place(["sw"]))], nets)[0].nets == ("mlx5_0:1", "mlx5_1:1")
    two = choose([(0, _place(["sw"])), (1, _place(["sw"]))], nets)
    assert (two[0].nets, two[1].nets) == (("mlx5_0:1",), ("mlx5_1:1",))


def test_compute_fabric_filter():
    """Active ports only; InfiniBand when present; then the fastest rate."""
    from ray_numa.nics import Port, RdmaNic
    mk = lambda n, state, layer, rate: RdmaNic(  # noqa: E731
        n, "0000:01:00.0", (Port(1, state, layer, rate),), (), _place())
    nics = [mk("a", "ACTIVE", "InfiniBand", 200.0), mk("b", "ACTIVE", "InfiniBand", 400.0),
            mk("c", "DOWN", "InfiniBand", 400.0), mk("d", "ACTIVE", "Ethernet", 400.0)]
    assert [n.name for n in compute_nets(nics)] == ["b:1"]
    roce = [mk("e", "ACTIVE", "Ethernet", 100.0), mk("f", "ACTIVE", "Ethernet", 200.0)]
    assert [n.name for n in compute_nets(roce)] == ["f:1"]
    assert compute_nets([]) == [] and choose([(0, _place())], []) == {}


def test_partial_and_broken_sysfs_never_raises(tmp_path):
    """hwloc-style: missing files, a dangling device link, junk port names and
    unreadable rates give fewer facts, not an exception."""
    ib = tmp_path / "class/infiniband"
    (ib / "mlx5_0/ports/1").mkdir(parents=True)           # no device link at all
    (ib / "mlx5_1").mkdir()
    os.symlink("../../../devices/nowhere", ib / "mlx5_1/device")   # dangling
    (ib / "rxe0").mkdir()                                  # no device link: skipped
    (ib / "mlx5_2/ports/1").mkdir(parents=True)
    (ib / "mlx5_2/ports/notaport").mkdir()
    (ib / "mlx5_2/ports/1/rate").write_text("fast\n")
    (ib / "mlx5_2/ports/1/state").write_text("4: ACTIVE\0")
    dev = tmp_path / "devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    dev.mkdir(parents=True)
    os.symlink(os.path.relpath(dev, ib / "mlx5_2"), ib / "mlx5_2/device")
    nics = read_nics(tmp_path)
    assert [n.name for n in nics] == ["mlx5_2"]
    (nic,) = nics
    assert nic.place is None          # no bus/pci/devices link: place unknown
    assert nic.ports[0].state == "ACTIVE" and nic.ports[0].rate_gbps is None
    assert compute_nets(nics) == []   # unknown place: never chosen
    assert read_nics(tmp_path / "absent") == ()


def test_this_machine_reads_without_error():
    """Whatever this machine has (often no RDMA device at all): the documented types."""
    nics = read_nics(Path("/sys"))
    assert isinstance(nics, tuple)
    for nic in nics:
        assert isinstance(nic, RdmaNic) and nic.name and bdf_order(nic.bdf) >= 0
        assert nic.place is None or isinstance(nic.place, PciPlace)
        assert isinstance(nic.verbs, str) and all(isinstance(d, str) for d in nic.netdevs)
        for port in nic.ports:
            assert isinstance(port.number, int) and isinstance(port.state, str)
            assert port.rate_gbps is None or port.rate_gbps > 0
    assert [bdf_order(n.bdf) for n in nics] == sorted(bdf_order(n.bdf) for n in nics)


# --- review findings (issue 23): cases built from a fixture spec -----------------------

def _spec(name):
    return copy.deepcopy(MACHINES[name])


def test_sriov_vfs_are_not_extra_nics(tmp_path):
    """A VF (``physfn`` link, as the kernel presents one) is part of its physical
    function: NCCL merges it (net_ib/init.cc ``ncclIbGetPciPath``,
    ``NCCL_IB_MERGE_VFS=1``), so it is neither chosen nor counted."""
    s = _spec("dgx-h100-net")
    parent = s["pci_paths"]["0000:18:00.0"]
    s["pci_paths"]["0000:18:00.1"] = parent
    s["nics"].append(_nic("mlx5_12", "0000:18:00.1", 0, net=("ibp24s0v0",)))
    root = build_spec(s, tmp_path / "t")
    os.symlink("../0000:18:00.0", root / "sys/devices" / parent / "0000:18:00.1/physfn")
    places, nics, chosen = _nets_at(root)
    assert "mlx5_12" not in [n.name for n in nics]
    assert chosen[0].nets == ("mlx5_0:1",) and chosen[0].path == "PIX"


def test_one_infiniband_port_does_not_evict_a_roce_compute_fabric(tmp_path):
    """8 x 400G RoCE on the GPU switches and one 200G InfiniBand storage port:
    rate ranks first, InfiniBand wins only among ports at the top rate."""
    s = _spec("dgx-h100-net")
    s["nics"] = [n for n in s["nics"] if n["name"] not in ("mlx5_2", "mlx5_7", "mlx5_8")]
    for n in s["nics"]:
        n["ports"] = ([("ACTIVE", "InfiniBand", 200)] if n["name"] == "mlx5_1"
                      else [("ACTIVE", "Ethernet", 400)])
    _, _, chosen = _nets_at(build_spec(s, tmp_path / "t"))
    assert [chosen[g].nets for g in range(8)] == [
        (f"mlx5_{n}:1",) for n in (0, 3, 4, 5, 6, 9, 10, 11)]


def test_the_jobs_nccl_ib_hca_allow_list_names_the_compute_fabric():
    """An all-Ethernet box whose storage port has the compute ports' rate: only the
    job's NCCL_IB_HCA tells them apart (NCCL's syntax, ``parseStringList`` and
    ``matchIfList`` in src/misc/utils.cc: prefix match, ``=`` exact, ``:port``; a
    leading ``^`` makes it a list of ports to exclude)."""
    mk = lambda n: RdmaNic(n, "0000:01:00.0", (Port(1, "ACTIVE", "Ethernet", 200.0),),  # noqa: E731
                           (), _place())
    nics = [mk("mlx5_0"), mk("mlx5_1"), mk("mlx5_10")]
    names = lambda hca: [n.name for n in compute_nets(nics, hca)]  # noqa: E731
    assert names("") == ["mlx5_0:1", "mlx5_1:1", "mlx5_10:1"]
    assert names("mlx5_1") == ["mlx5_1:1", "mlx5_10:1"]
    assert names("=mlx5_1") == ["mlx5_1:1"]
    assert names("=mlx5_0:1,mlx5_10:2") == ["mlx5_0:1"]
    # "^" excludes (prefixes too, "^=" exactly): NCCL keeps off those ports, so do we
    assert names("^mlx5_1") == ["mlx5_0:1"]
    assert names("^=mlx5_1") == ["mlx5_0:1", "mlx5_10:1"]
    assert names("^mlx5_0:2") == names("")


def test_nccl_ib_hca_is_read_character_for_character_as_nccl_does():
    """NCCL's ``parseStringList`` (src/misc/utils.cc) keeps spaces in a name (" mlx5_1"
    names no device), reads a port with ``atoi`` ("mlx5_0:" is port 0, which no device
    has; "01" is 1), and ``matchIfList`` of an empty list matches every device, so
    "^" alone excludes every port and "=" alone keeps every port. Before, names were
    stripped, "mlx5_0:" meant every port, "01" no port, "^" excluded nothing and "="
    everything: ray-numa pointed the worker at ports NCCL would not use, or at none."""
    mk = lambda n: RdmaNic(n, "0000:01:00.0", (Port(1, "ACTIVE", "Ethernet", 200.0),),  # noqa: E731
                           (), _place())
    nics = [mk("mlx5_0"), mk("mlx5_1"), mk("mlx5_10")]
    names = lambda hca: [n.name for n in compute_nets(nics, hca)]  # noqa: E731
    every = ["mlx5_0:1", "mlx5_1:1", "mlx5_10:1"]
    assert names("^mlx5_0, mlx5_1") == ["mlx5_1:1", "mlx5_10:1"]   # " mlx5_1": no device
    assert names("mlx5_0, mlx5_1") == ["mlx5_0:1"]
    assert names("mlx5_0:") == []
    assert names("=mlx5_1:01") == ["mlx5_1:1"]
    assert names("^") == []
    assert names("=") == every
    assert names("^=") == []


@pytest.mark.parametrize("text", [None, "", "\0\0", "nan Gb/sec", "inf Gb/sec", "fast",
                                  "0 Gb/sec", "-400 Gb/sec", "400"])
def test_an_unknown_rate_never_evicts_a_port(tmp_path, text):
    """``rate_show`` fails with EINVAL when speed or width is unknown (the file
    reads as an error); anything but "<n> Gb/sec" (n > 0) is unknown too, and a
    port of unknown rate stays in, ranked by distance."""
    root = build_spec(MACHINES["dgx-h100-net"], tmp_path / "t")
    rate = root / "sys/class/infiniband/mlx5_0/ports/1/rate"
    rate.unlink()
    if text is not None:
        rate.write_text(text + "\n")
    places, nics, chosen = _nets_at(root)
    assert chosen[0].nets == ("mlx5_0:1",) and chosen[0].path == "PIX"
    assert chosen[1].nets == ("mlx5_3:1",)        # nor sets the top rate for the others
    assert nics[0].name == "mlx5_0" and nics[0].ports[0].rate_gbps is None


def test_rate_parses_what_the_kernel_writes(tmp_path):
    port = tmp_path / "1"
    port.mkdir()
    from ray_numa.nics import _port
    for text, gbps in (("400 Gb/sec (4X NDR)", 400.0), ("2.5 Gb/sec (1X SDR)", 2.5),
                       ("53.125 Gb/sec (1X HDR)", 53.125)):
        (port / "rate").write_text(text + "\n")
        assert _port(port).rate_gbps == gbps


def test_nic_order_is_pci_order_as_in_nccl(tmp_path):
    """``ncclIbCompareDevs`` (NCCL_IB_DEVICE_PCI_ORDER=1) and the XML tree's bus-id
    order: with Grace 0's two CX-7s probed the other way round (mlx5_0 at
    0002:03:00.0), GPU 0 still gets the NIC at 0000:03:00.0."""
    s = _spec("gb200-net")
    s["nics"][0]["bdf"], s["nics"][1]["bdf"] = "0002:03:00.0", "0000:03:00.0"
    _, nics, chosen = _nets_at(build_spec(s, tmp_path / "t"))
    assert [n.bdf for n in nics][:2] == ["0000:03:00.0", "0002:03:00.0"]
    assert chosen[0].nets == ("mlx5_1:1",) and chosen[1].nets == ("mlx5_0:1",)
    assert bdf_order("0000:03:00.1") < bdf_order("0000:03:01.0") < bdf_order("0002:00:00.0")


# --- software RoCE (rdma_rxe): no PCI parent, placed by its netdev ----------------------

def test_soft_roce_is_placed_at_its_netdevs_function(machine_tree):
    """The VM tier's guest as a fixture (paths as its 6.1 kernel showed them): rxe
    devices live under ``devices/virtual/infiniband``, their netdevs are virtio-net
    functions (``net/eth1/device`` -> ``<bdf>/virtio3``), their verbs devices are named
    only in ``class/infiniband_verbs/uverbsN/ibdev``. GPU 81:00.0 shares host bridge
    pci0000:80 with rxe_n1's function (PHB), and rxe_n0 is on node 0 (SYS)."""
    places, nics, chosen = _nets(machine_tree, "soft-roce-vm")
    assert [(n.name, n.bdf, n.via, n.verbs, n.netdevs) for n in nics] == [
        ("rxe_n0", "0000:41:00.0", "eth0", "uverbs0", ("eth0",)),
        ("rxe_n1", "0000:82:00.0", "eth1", "uverbs1", ("eth1",))]
    assert matrix(places, nics) == [["SYS", "PHB"]]
    assert chosen[0].nets == ("rxe_n1:1",) and chosen[0].path == "PHB"


def test_soft_roce_over_a_hardware_nics_netdev_is_the_same_nic(tmp_path):
    """rxe over mlx5_0's own netdev is mlx5_0 again: it is left out (not a second NIC
    to spread GPUs over), and mlx5_0 is chosen as before."""
    root = build_spec(_spec("dgx-h100-net"), tmp_path / "t")
    sys_root = root / "sys"
    func = os.path.realpath(sys_root / "class/infiniband/mlx5_0/device")
    os.makedirs(sys_root / "class/net")
    os.symlink(os.path.join(func, "net/ibp24s0"), sys_root / "class/net/ibp24s0")
    os.symlink("../..", os.path.join(func, "net/ibp24s0/device"))
    virtual = sys_root / "devices/virtual/infiniband/rxe0"
    (virtual / "ports/1/gid_attrs/ndevs").mkdir(parents=True)
    (virtual / "ports/1/state").write_text("4: ACTIVE\n")
    (virtual / "ports/1/link_layer").write_text("Ethernet\n")
    (virtual / "ports/1/rate").write_text("400 Gb/sec (4X NDR)\n")
    (virtual / "ports/1/gid_attrs/ndevs/0").write_text("ibp24s0\n")
    os.symlink("../../devices/virtual/infiniband/rxe0", sys_root / "class/infiniband/rxe0")
    places, nics, chosen = _nets_at(root)
    assert "rxe0" not in [n.name for n in nics]
    assert chosen[0].nets == ("mlx5_0:1",) and chosen[0].path == "PIX"


@pytest.mark.parametrize("netdev", [None, "", "\0", "bond0", "eth9", "../../..",
                                    "a" * 40, "lo"])
def test_soft_roce_without_a_pci_netdev_is_skipped(machine_tree, tmp_path, netdev):
    """A bond, a VLAN or a missing/garbled GID netdev: no PCI function to place the
    device at, so it is not a NIC here (as before), and nothing raises."""
    import shutil
    root = tmp_path / "t"
    shutil.copytree(machine_tree("soft-roce-vm"), root, symlinks=True)
    ndev = root / "sys/devices/virtual/infiniband/rxe_n1/ports/1/gid_attrs/ndevs/0"
    ndev.unlink()
    if netdev is not None:
        ndev.write_text(netdev + "\n")
    (root / "sys/class/net/lo").symlink_to("../../devices/virtual/net/lo")
    (root / "sys/devices/virtual/net/lo").mkdir(parents=True)
    places, nics, chosen = _nets_at(root)
    assert [n.name for n in nics] == ["rxe_n0"]
    assert chosen[0].nets == ("rxe_n0:1",) and chosen[0].path == "SYS"


# --- review (rev23): a VF whose physical function has no RDMA device here ---------------

def test_a_vf_whose_pf_is_not_listed_is_the_nic(tmp_path):
    """A Kubernetes pod given one SR-IOV VF (rdma ``netns exclusive`` mode, the SR-IOV
    CNI's default for RDMA): ``class/infiniband`` (namespaced by the kernel's ib_class)
    lists only the VF's device, while ``bus/pci/devices/<vf>/physfn`` (not namespaced)
    is still there. The VF is the only way this process reaches the NIC, and NCCL
    uses it (``NCCL_IB_MERGE_VFS`` merges a VF into its PF only where both are
    listed), so it is kept, at its own place; with the PF listed it stays merged."""
    s = _spec("socket0-nics")
    s["nics"] = [dict(_nic("mlx5_5", "0000:3b:00.1", 0, "Ethernet", 200))]
    root = build_spec(s, tmp_path / "t")
    vf = root / "sys/devices" / s["pci_paths"]["0000:3b:00.1"] / "0000:3b:00.1"
    (vf.parent / "0000:3b:00.0").mkdir()            # the PF: a function, no RDMA device
    os.symlink("../0000:3b:00.0", vf / "physfn")
    places, nics, chosen = _nets_at(root)
    assert [n.name for n in nics] == ["mlx5_5"]
    assert chosen[0].nets == ("mlx5_5:1",) and chosen[0].path == "NODE"


@pytest.mark.parametrize("text", ["1" * 5000, "-" + "9" * 4400], ids=["5000", "-4400"])
def test_a_numa_node_of_thousands_of_digits_is_unknown_not_an_exception(tmp_path, text):
    """Python (3.11+) refuses ``int()`` of more than 4300 digits (ValueError): such a
    ``numa_node`` made ``read_nics`` raise, so ``ray-numa show`` and the audit failed
    on the whole machine. It is garbage, an unknown node (-1), as any other."""
    root = build_spec(MACHINES["socket0-nics"], tmp_path / "t")
    (root / "sys/bus/pci/devices/0000:21:00.0/numa_node").write_text(text + "\n")
    places, nics, chosen = _nets_at(root)
    assert nics[0].name == "mlx5_0" and nics[0].place.numa_node == -1
    assert chosen[0].nets == ("mlx5_1:1",)


def test_scalable_functions_are_part_of_their_pf_like_vfs(tmp_path):
    """mlx5 scalable functions (SFs): each is an RDMA device whose ``device`` link is
    its auxiliary device below the PF (``<pf bdf>/mlx5_core.sf.N``, kernel
    Documentation/networking/device_drivers/ethernet/mellanox/mlx5/switchdev.rst). They
    share the PF's port as VFs do, so with the PF's own device listed they are not
    more NICs: GPU 0 was given mlx5_0:1,mlx5_12:1,mlx5_13:1 (three "PIX NICs" on one
    port) and the audit counted 12 NICs. A pod that sees only its SF keeps it."""
    root = build_spec(_spec("dgx-h100-net"), tmp_path / "t")
    sys_root = root / "sys"
    pf = os.path.realpath(sys_root / "class/infiniband/mlx5_0/device")
    for n, name in ((2, "mlx5_12"), (3, "mlx5_13")):
        sf = os.path.join(pf, f"mlx5_core.sf.{n}")
        os.makedirs(os.path.join(sf, f"infiniband_verbs/uverbs{10 + n}"))
        (root / f"dev/infiniband/uverbs{10 + n}").write_text("")
        ib = sys_root / "class/infiniband" / name
        (ib / "ports/1").mkdir(parents=True)
        os.symlink(os.path.relpath(sf, ib), ib / "device")
        for f, text in (("state", "4: ACTIVE"), ("link_layer", "InfiniBand"),
                        ("rate", "400 Gb/sec (4X NDR)")):
            (ib / "ports/1" / f).write_text(text + "\n")
    places, nics, chosen = _nets_at(root)
    assert "mlx5_12" not in [n.name for n in nics]
    assert chosen[0].nets == ("mlx5_0:1",) and chosen[0].path == "PIX"
    shutil.rmtree(sys_root / "class/infiniband/mlx5_0")      # the pod's view: its SFs
    places, nics, chosen = _nets_at(root)
    assert [n.bdf for n in nics if n.name in ("mlx5_12", "mlx5_13")] == ["0000:18:00.0"] * 2
    assert chosen[0].path == "PIX"


def test_soft_roce_over_a_usb_nic_is_not_placed_at_the_usb_controller(machine_tree, tmp_path):
    """rxe over a USB Ethernet adapter (or a BMC's USB NIC, ``usb0``): the netdev's
    ``device`` is ``<xHCI bdf>/usb1/1-1/1-1:1.0``, whose ``subsystem`` is usb. The
    nearest BDF is the USB controller, not a NIC: it has no PCI place of its own
    (NCCL's ncclTopoFillNet: a net whose path is not a PCI device, "virtual, usb",
    is attached to the first CPU, not to a PCI node), and it was given to GPU 0 as
    a PHB NIC over node 0's real (virtio-net) one."""
    root = tmp_path / "t"
    shutil.copytree(machine_tree("soft-roce-vm"), root, symlinks=True)
    sys_root = root / "sys"
    func = os.path.realpath(sys_root / "bus/pci/devices/0000:82:00.0")
    shutil.rmtree(os.path.join(func, "virtio3"))
    usb = os.path.join(func, "usb1/1-1/1-1:1.0")
    os.makedirs(os.path.join(usb, "net/eth1"))
    os.makedirs(sys_root / "bus/usb")
    os.symlink(os.path.relpath(sys_root / "bus/usb", usb), os.path.join(usb, "subsystem"))
    os.symlink("../..", os.path.join(usb, "net/eth1/device"))
    (sys_root / "class/net/eth1").unlink()
    os.symlink(os.path.relpath(os.path.join(usb, "net/eth1"), sys_root / "class/net"),
               sys_root / "class/net/eth1")
    places, nics, chosen = _nets_at(root)
    assert [n.name for n in nics] == ["rxe_n0"]
    assert chosen[0].nets == ("rxe_n0:1",) and chosen[0].path == "SYS"
