"""``ray-numa show`` (the GPU x NIC matrix), ``ray-numa exec --nic`` and the audit's
NIC warnings, on fixture machines with NICs."""
import copy
import json
import os
import sys

from ray_numa.nic_env import audit_warnings
from tests.fixtures.build import build_spec
from tests.fixtures.machines import MACHINES
from tests.test_cli_launcher import ray_numa

PRINT_ENV = [sys.executable, "-c", "import json, os; print(json.dumps({k: os.environ.get(k) "
             "for k in ('UCX_NET_DEVICES', 'NVSHMEM_HCA_LIST', 'UCCL_P2P_RDMA_DEV', "
             "'NCCL_IB_HCA')}))"]


def test_show_prints_the_gpu_by_nic_matrix(machine_tree):
    env = {"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100-net"))}
    r = json.loads(ray_numa("show", "--json", env=env).stdout)["nics"]
    names = [d["name"] for d in r["devices"]]
    assert names[:3] == ["mlx5_0", "mlx5_1", "mlx5_2"] and len(names) == 12
    assert r["matrix"]["0"][names.index("mlx5_0")] == "PIX"
    assert r["matrix"]["0"][names.index("mlx5_6")] == "SYS"
    assert r["chosen"]["5"] == {"nets": ["mlx5_9:1"], "path": "PIX"}
    storage_eth = r["devices"][names.index("mlx5_2")]
    assert storage_eth["ports"][0]["link_layer"] == "Ethernet"
    assert storage_eth["ports"][0]["eligible"] is False
    text = ray_numa("show", env=env).stdout
    assert "GPU x NIC" in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("GPU0 ")] == ["PIX"]


def test_show_without_rdma_nics_says_so(machine_tree):
    env = {"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100"))}
    assert "RDMA NICs: none" in ray_numa("show", env=env).stdout


def test_exec_nic_sets_the_ranks_nic_and_keeps_the_users(machine_tree):
    env = {"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100-net")), "LOCAL_RANK": "4"}
    got = json.loads(ray_numa("exec", "--nic", "auto", "--", *PRINT_ENV, env=env)
                     .stdout.splitlines()[-1])
    assert got == {"UCX_NET_DEVICES": "mlx5_6:1", "NVSHMEM_HCA_LIST": "mlx5_6:1",
                   "UCCL_P2P_RDMA_DEV": "mlx5_6", "NCCL_IB_HCA": None}
    mine = dict(env, UCX_NET_DEVICES="mlx5_1:1")
    got = json.loads(ray_numa("exec", "--nic", "UCX_NET_DEVICES,NCCL_IB_HCA", "--",
                              *PRINT_ENV, env=mine).stdout.splitlines()[-1])
    assert got["UCX_NET_DEVICES"] == "mlx5_1:1" and got["NCCL_IB_HCA"] == "=mlx5_6:1"
    assert got["NVSHMEM_HCA_LIST"] is None
    spaced = json.loads(ray_numa("exec", "--nic", "UCX_NET_DEVICES, NCCL_IB_HCA,", "--",
                                 *PRINT_ENV, env=env).stdout.splitlines()[-1])
    assert spaced["UCX_NET_DEVICES"] == "mlx5_6:1" and spaced["NCCL_IB_HCA"] == "=mlx5_6:1"
    for wrong in ("UCX_TLS", "", "Auto", ","):
        bad = ray_numa("exec", "--nic", wrong, "--", "true", env=env, check=False)
        assert bad.returncode == 2 and f"--nic {wrong!r}" in bad.stderr, wrong
        assert "numa_bind accepts" not in bad.stderr
    node = ray_numa("exec", "--node", "1", "--nic", "auto", "--", "true", env=env,
                    check=False)
    assert node.returncode == 2 and "--nic follows the GPU, and --node binds none" in node.stderr


def test_audit_warns_on_a_sys_nic_and_on_ucx_all(machine_tree):
    dgx = machine_tree("dgx-h100-net") / "sys"
    far = {"gpus": ["4"], "nic": ["mlx5_1:1"], "nic_path": "SYS", "nic_vars": []}
    assert audit_warnings(far, {"UCX_NET_DEVICES": "mlx5_1:1"}, dgx) == [
        "nic: mlx5_1:1 is across sockets (SYS) from its GPU"]
    gpu = {"gpus": ["0"], "status": "bound"}
    [warning] = audit_warnings(gpu, {"UCX_NET_DEVICES": "all"}, dgx)
    assert "UCX_NET_DEVICES=all on a node with 10 RDMA NICs" in warning
    # ray-numa's own value (recorded) is what the process has, not its start environ
    fixed = dict(gpu, nic_vars=["UCX_NET_DEVICES=mlx5_0:1"])
    assert audit_warnings(fixed, {"UCX_NET_DEVICES": "all"}, dgx) == []
    # one NIC: "all" is that NIC; CPU workers are not GPU workers
    assert audit_warnings(gpu, {"UCX_NET_DEVICES": "all"},
                          machine_tree("dgx-h100") / "sys") == []
    assert audit_warnings({"gpus": []}, {"UCX_NET_DEVICES": "all"}, dgx) == []


def test_audit_counts_unset_ucx_net_devices_as_all(machine_tree):
    """UCX's default is UCX_NET_DEVICES=all (``ucx_info -c``)."""
    dgx = machine_tree("dgx-h100-net") / "sys"
    [warning] = audit_warnings({"gpus": ["0"], "status": "bound"}, {}, dgx)
    assert "UCX_NET_DEVICES unset (UCX default: all) on a node with 10 RDMA NICs" in warning


def test_audit_says_numa_node_unknown_not_across_sockets(tmp_path):
    """Firmware that gives a NIC no proximity (numa_node -1): NCCL's path is SYS, but
    whether it crosses a socket is unknown, and the warning says that."""
    spec = copy.deepcopy(MACHINES["socket0-nics"])
    for nic in spec["nics"]:
        nic["numa"] = -1
    root = build_spec(spec, tmp_path / "t") / "sys"
    far = {"gpus": ["0"], "nic": ["mlx5_0:1"], "nic_path": "SYS", "nic_vars": []}
    [warning] = audit_warnings(far, {"UCX_NET_DEVICES": "mlx5_0:1"}, root)
    assert "NUMA node is unknown" in warning and "across sockets" not in warning


def test_audit_does_not_count_sriov_vfs(tmp_path):
    """A VF is its physical function's (NCCL_IB_MERGE_VFS): one NIC and its VF are
    one NIC for UCX_NET_DEVICES=all."""
    spec = copy.deepcopy(MACHINES["socket0-nics"])
    spec["nics"] = spec["nics"][1:]
    spec["nics"][1]["ports"] = [("ACTIVE", "Ethernet", 200)]
    root = build_spec(spec, tmp_path / "t") / "sys"
    gpu = {"gpus": ["0"], "status": "bound"}
    assert audit_warnings(gpu, {"UCX_NET_DEVICES": "all"}, root)       # two PFs
    vf = root / "devices" / spec["pci_paths"]["0000:3b:00.1"] / "0000:3b:00.1"
    os.symlink("../0000:3b:00.0", vf / "physfn")
    assert audit_warnings(gpu, {"UCX_NET_DEVICES": "all"}, root) == []


def test_show_chooses_among_the_nics_a_worker_can_open(tmp_path):
    """A pod whose device plugin gave it only uverbs0 and uverbs1 (mlx5_0, mlx5_3):
    a worker chooses among the NICs whose verbs device opens (nic_env._usable), so
    ``show`` must too; it printed GPU 2 -> mlx5_4:1 while ``exec --nic`` set
    mlx5_0:1,mlx5_3:1 for rank 2."""
    root = build_spec(MACHINES["dgx-h100-net"], tmp_path / "t")
    for f in os.listdir(root / "dev/infiniband"):
        if f not in ("uverbs0", "uverbs1"):
            os.unlink(root / "dev/infiniband" / f)
    env = {"RAY_NUMA_FIXTURE": str(root)}
    shown = json.loads(ray_numa("show", "--json", env=env).stdout)["nics"]
    got = json.loads(ray_numa("exec", "--nic", "UCX_NET_DEVICES", "--", *PRINT_ENV,
                              env=dict(env, LOCAL_RANK="2")).stdout.splitlines()[-1])
    assert got["UCX_NET_DEVICES"] == "mlx5_0:1,mlx5_3:1"
    assert shown["chosen"]["2"] == {"nets": ["mlx5_0:1", "mlx5_3:1"], "path": "NODE"}
    names = [d["name"] for d in shown["devices"]]
    assert shown["devices"][names.index("mlx5_4")]["ports"][0]["eligible"] is False
    assert shown["matrix"]["2"][names.index("mlx5_4")] == "PIX"     # the PCI fact stays


def test_a_vf_is_the_nic_where_only_its_verbs_device_opens(tmp_path):
    """A pod given one SR-IOV VF with the RDMA subsystem in its default ``shared``
    netns mode: sysfs lists every device (the PF mlx5_0 and its VF mlx5_12), but only
    the VF's /dev/infiniband/uverbs12 is in the pod. Merging the VF into its PF
    before asking which devices open left this pod with no NIC at all."""
    s = copy.deepcopy(MACHINES["dgx-h100-net"])
    parent = s["pci_paths"]["0000:18:00.0"]
    s["pci_paths"]["0000:18:00.1"] = parent
    s["nics"].append(dict(MACHINES["dgx-h100-net"]["nics"][0], name="mlx5_12",
                          bdf="0000:18:00.1", net=("ibp24s0v0",)))
    root = build_spec(s, tmp_path / "t")
    os.symlink("../0000:18:00.0", root / "sys/devices" / parent / "0000:18:00.1/physfn")
    for f in os.listdir(root / "dev/infiniband"):
        if f != "uverbs12":
            os.unlink(root / "dev/infiniband" / f)
    env = {"RAY_NUMA_FIXTURE": str(root), "LOCAL_RANK": "0"}
    got = json.loads(ray_numa("exec", "--nic", "UCX_NET_DEVICES", "--", *PRINT_ENV,
                              env=env).stdout.splitlines()[-1])
    assert got["UCX_NET_DEVICES"] == "mlx5_12:1"
    shown = json.loads(ray_numa("show", "--json", env=env).stdout)["nics"]
    assert shown["chosen"]["0"] == {"nets": ["mlx5_12:1"], "path": "PIX"}


def test_devices_that_cannot_be_placed_are_named_not_called_none(machine_tree, tmp_path,
                                                                  on_machine, capsys):
    """rxe over a bond (its GID netdev has no PCI function): ``show`` names the devices
    it could not place instead of "no /sys/class/infiniband devices", and a worker's
    note says why no NIC was chosen (rev23 item 9)."""
    import shutil
    from ray_numa import cli, nic_env
    root = tmp_path / "t"
    shutil.copytree(machine_tree("soft-roce-vm"), root, symlinks=True)
    for name in ("rxe_n0", "rxe_n1"):
        (root / f"sys/devices/virtual/infiniband/{name}/ports/1/gid_attrs/ndevs/0"
         ).write_text("bond0\n")
    on_machine(root)
    assert cli.main(["show"]) == 0
    out = capsys.readouterr().out
    assert "RDMA NICs: none placed; rxe_n0, rxe_n1: listed in /sys/class/infiniband" in out
    assert "no /sys/class/infiniband devices" not in out
    choice, why = nic_env.choice_for(["0"])
    assert choice is None and why.startswith("RDMA device(s) rxe_n0, rxe_n1 have no PCI "
                                             "function behind them"), why


def test_show_marks_a_software_device_and_its_netdev(machine_tree, on_machine, capsys):
    from ray_numa import cli
    on_machine("soft-roce-vm")
    assert cli.main(["show"]) == 0
    out = capsys.readouterr().out
    assert "rxe_n1:1 ACTIVE Ethernet 2.5G eligible (software, over eth1)" in out, out
    row = next(line for line in out.splitlines() if line.lstrip().startswith("GPU0"))
    assert row.split()[1:] == ["SYS", "PHB", "rxe_n1:1"], row
