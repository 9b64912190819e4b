"""``numa_bind: {"nic": ...}``: the variables a GPU worker gets, in-process and via
``ray-numa exec`` / ``bind_current_process`` on fixture machines with NICs.

Syntax sources: UCX ``UCX_NET_DEVICES`` (``ucx_info -c``: ``mlx5_0:1`` device:port
list), NVSHMEM ``NVSHMEM_HCA_LIST`` (``hca[:port]`` list), UCCL P2P
``UCCL_P2P_RDMA_DEV`` (comma-separated device names, ``p2p/rdma`` ``get_best_dev_idx``),
NCCL ``NCCL_IB_HCA`` (a leading ``=`` matches names exactly).
"""
import copy
import shutil
import sys
import types

import pytest

from ray_numa import nic_env
from ray_numa.binding import Binder
from ray_numa.options import NIC_VARS, parse
from ray_numa.pcipath import NicChoice
from tests.fixtures.build import build_spec
from tests.fixtures.machines import MACHINES
from tests.procs import child_report

AUTO = parse({"nic": "auto"})


@pytest.fixture
def clean_env(monkeypatch):
    """No NIC variable set; whatever a test sets is undone afterwards."""
    for name in NIC_VARS + ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.setenv(name, "")      # records the value to restore, absent included
        monkeypatch.delenv(name)
    return monkeypatch


def test_each_library_gets_its_own_syntax():
    choice = NicChoice(gpu=0, nets=("mlx5_0:1", "mlx5_1:1"), path="PIX")
    assert nic_env.values(choice, NIC_VARS) == {
        "UCX_NET_DEVICES": "mlx5_0:1,mlx5_1:1", "NVSHMEM_HCA_LIST": "mlx5_0:1,mlx5_1:1",
        "UCCL_P2P_RDMA_DEV": "mlx5_0,mlx5_1", "NCCL_IB_HCA": "=mlx5_0:1,mlx5_1:1"}


def test_plan_keeps_what_others_set_and_takes_back_only_its_own():
    wanted = {"UCX_NET_DEVICES": "mlx5_3:1", "NVSHMEM_HCA_LIST": "mlx5_3:1"}
    environ = {"UCX_NET_DEVICES": "all", "NVSHMEM_HCA_LIST": "mlx5_0:1",
               "UCCL_P2P_RDMA_DEV": "mlx5_0"}
    ours = {"NVSHMEM_HCA_LIST": "mlx5_0:1", "UCCL_P2P_RDMA_DEV": "mlx5_0"}
    writes, kept = nic_env.plan(wanted, environ, ours)
    # UCX_NET_DEVICES=all is the user's; the other two were ray-numa's
    assert kept == ("UCX_NET_DEVICES",)
    assert writes == {"NVSHMEM_HCA_LIST": "mlx5_3:1", "UCCL_P2P_RDMA_DEV": None}
    # a value the user changed after ray-numa set it is the user's now
    assert nic_env.plan({}, {"UCCL_P2P_RDMA_DEV": "mine"}, ours) == ({}, ())


def test_worker_env_names_its_gpus_switch_nic(on_machine, clean_env):
    on_machine("dgx-h100-net")
    import os
    binding = Binder().bind(AUTO, ["3"], gpu_rule="assigned")
    assert os.environ["UCX_NET_DEVICES"] == "mlx5_5:1"
    assert os.environ["NVSHMEM_HCA_LIST"] == "mlx5_5:1"
    assert os.environ["UCCL_P2P_RDMA_DEV"] == "mlx5_5"
    assert "NCCL_IB_HCA" not in os.environ          # only when asked
    assert binding.status == "bound" and binding.cpus == "0-55,112-167"
    assert (binding.nic, binding.nic_path) == (("mlx5_5:1",), "PIX")
    assert binding.nic_vars == ("UCX_NET_DEVICES=mlx5_5:1", "NVSHMEM_HCA_LIST=mlx5_5:1",
                                "UCCL_P2P_RDMA_DEV=mlx5_5")


def test_default_leaves_the_environment_alone(on_machine, clean_env):
    on_machine("dgx-h100-net")
    import os
    binding = Binder().bind(parse("auto"), ["3"])
    assert not any(n in os.environ for n in NIC_VARS)
    assert (binding.nic, binding.nic_vars) == ((), ())


def test_user_value_wins_and_the_record_says_so(on_machine, clean_env):
    on_machine("dgx-h100-net")
    import os
    clean_env.setenv("UCX_NET_DEVICES", "all")
    binding = Binder().bind(parse({"nic": {"vars": ["UCX_NET_DEVICES", "NCCL_IB_HCA"]}}),
                            ["0"])
    assert os.environ["UCX_NET_DEVICES"] == "all"
    assert os.environ["NCCL_IB_HCA"] == "=mlx5_0:1"
    assert "NVSHMEM_HCA_LIST" not in os.environ
    assert binding.nic_vars == ("UCX_NET_DEVICES=all", "NCCL_IB_HCA==mlx5_0:1")
    assert any("UCX_NET_DEVICES already set to 'all'" in n for n in binding.notes)


def test_pooled_worker_follows_its_gpus_and_a_cpu_task_gets_none(on_machine, clean_env):
    on_machine("socket0-nics")
    import os
    binder = Binder()
    binder.bind(AUTO, ["5"], pooled=True)                # socket 1: only SYS NICs
    assert os.environ["UCX_NET_DEVICES"] == "mlx5_1:1"
    assert binder.binding.nic_path == "SYS"
    binder.bind(AUTO, ["2"], pooled=True)
    assert os.environ["UCCL_P2P_RDMA_DEV"] == "mlx5_0"
    assert binder.binding.nic_path == "NODE"
    binder.bind(AUTO, [], pooled=True)                   # a CPU-only task next
    assert not any(n in os.environ for n in NIC_VARS)
    assert binder.binding.nic == ()


def test_follow_resets_and_says_if_a_library_had_already_loaded(on_machine, clean_env):
    on_machine("dgx-h100-net")
    import os
    binder = Binder()
    binder.bind(AUTO, ["0"])
    # only the module's presence in sys.modules is read (READERS)
    clean_env.setitem(sys.modules, "nixl", types.ModuleType("nixl"))
    binding = binder.follow("6")
    assert os.environ["UCX_NET_DEVICES"] == "mlx5_10:1"
    assert binding.gpu_rule == "followed device" and binding.nic == ("mlx5_10:1",)
    assert any("nixl already loaded" in n for n in binding.notes)


def test_machine_without_rdma_nics_sets_nothing_and_says_why(on_machine, clean_env):
    on_machine("dgx-h100")
    import os
    binding = Binder().bind(AUTO, ["1"])
    assert binding.status == "bound" and binding.nic == ()
    assert not any(n in os.environ for n in NIC_VARS)
    assert any("no active compute RDMA NIC for GPU 1" in n for n in binding.notes)


def test_bind_current_process_sets_the_local_ranks_nic(machine_tree):
    """torchrun-like: LOCAL_RANK through a remapped CUDA_VISIBLE_DEVICES."""
    code = '''
        import os
        from ray_numa import bind_current_process
        b = bind_current_process(options={"nic": "auto"})
        report(binding=b.as_dict(), ucx=os.environ.get("UCX_NET_DEVICES"))
    '''
    r = child_report(code, env={"RAY_NUMA_FIXTURE": str(machine_tree("gb200-net")),
                                "LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "0,3"})
    assert r["binding"]["gpus"] == ["3"] and r["ucx"] == "mlx5_5:1"
    assert r["binding"]["nic_path"] == "NODE"


@pytest.fixture
def custom_machine(on_machine, tmp_path, monkeypatch):
    """``custom_machine(spec, edit)``: a fixture tree built from ``spec`` in tmp_path,
    ``edit(root)`` applied, and ray-numa pointed at it (as ``on_machine`` does)."""
    def use(spec, edit=lambda root: None):
        on_machine("dgx-h100-net")               # the caches cleared, restored after
        root = build_spec(spec, tmp_path / "machine")
        edit(root)
        monkeypatch.setenv("RAY_NUMA_FIXTURE", str(root))
        return root
    return use


def test_rdma_less_container_sets_nothing_and_says_why(custom_machine, clean_env):
    """A container without the RDMA devices sees /sys/class/infiniband but has no
    /dev/infiniband/uverbsN to open (libibverbs' ibv_open_device opens it O_RDWR).
    The fixture expresses it by leaving dev/infiniband out: tests run as root, so a
    file mode would not block the open."""
    import os
    custom_machine(dict(MACHINES["dgx-h100-net"], dev_infiniband=False))
    binding = Binder().bind(AUTO, ["0"])
    assert binding.status == "bound" and binding.nic == ()
    assert not any(n in os.environ for n in NIC_VARS)
    assert any("no verbs device" in n and "uverbsN" in n for n in binding.notes)


def test_a_nic_without_a_verbs_device_is_not_chosen(custom_machine, clean_env):
    """sysfs with no ``device/infiniband_verbs/uverbsN`` for GPU 0's NIC (ib_uverbs
    not bound to it): GPU 0 gets the nearest NIC it can use, not that one."""
    import os
    custom_machine(MACHINES["dgx-h100-net"], lambda root: shutil.rmtree(
        root / "sys/class/infiniband/mlx5_0/device/infiniband_verbs"))
    Binder().bind(AUTO, ["0"])
    assert os.environ["UCX_NET_DEVICES"] not in ("mlx5_0:1", "")


def test_gpu_without_a_pci_path_is_named_as_such(custom_machine, clean_env):
    custom_machine(MACHINES["dgx-h100-net"],
                   lambda root: (root / "sys/bus/pci/devices/0000:1b:00.0").unlink())
    binding = Binder().bind(AUTO, ["0"])
    assert binding.nic == ()
    [note] = [n for n in binding.notes if n.startswith("nic:")]
    assert "PCI path of GPU 0 is unknown" in note and "no active compute" not in note


def test_the_jobs_nccl_ib_hca_is_the_compute_fabric(custom_machine, clean_env):
    """All-Ethernet box whose second port (storage) has the compute ports' rate:
    the job's NCCL_IB_HCA allow-list keeps it out; ray-numa's own value is not
    mistaken for the job's on a rebind."""
    import os
    spec = copy.deepcopy(MACHINES["socket0-nics"])
    spec["nics"][2]["ports"] = [("ACTIVE", "Ethernet", 200)]
    custom_machine(spec)
    binder = Binder()
    binder.bind(AUTO, ["2"], pooled=True)    # 3 NICs in PCI order, 4 GPUs: GPU 2 -> 3rd
    assert os.environ["UCX_NET_DEVICES"] == "mlx5_2:1"
    clean_env.delenv("UCX_NET_DEVICES")
    clean_env.setenv("NCCL_IB_HCA", "=mlx5_0,mlx5_1")
    binder = Binder()
    binder.bind(AUTO, ["2"], pooled=True)    # 2 NICs: 2 % 4 = 2, mirrored over 2 -> 0
    assert os.environ["UCX_NET_DEVICES"] == "mlx5_0:1"
    clean_env.delenv("NCCL_IB_HCA")
    for key in ("UCX_NET_DEVICES", "NVSHMEM_HCA_LIST", "UCCL_P2P_RDMA_DEV"):
        clean_env.delenv(key)
    both = parse({"nic": {"vars": ["UCX_NET_DEVICES", "NCCL_IB_HCA"]}})
    binder = Binder()
    binder.bind(both, ["0"], pooled=True)
    assert os.environ["NCCL_IB_HCA"] == "=mlx5_0:1"
    binder.bind(both, ["2"], pooled=True)    # its own "=mlx5_0:1" is not the job's list
    assert os.environ["NCCL_IB_HCA"] == "=mlx5_2:1"


def test_follow_notes_deep_ep_and_an_initialized_process_group(on_machine, clean_env):
    """DeepEP bundles NVSHMEM; NCCL reads NCCL_IB_HCA once (net_ib/init.cc
    ncclIbInit), so a process group already up may keep the old NIC. The stand-in
    has torch.distributed's own ``is_initialized()``."""
    on_machine("dgx-h100-net")
    binder = Binder()
    binder.bind(parse({"nic": {"vars": ["NVSHMEM_HCA_LIST", "NCCL_IB_HCA"]}}), ["0"])
    dist = types.ModuleType("torch.distributed")
    dist.is_initialized = lambda: True
    clean_env.setitem(sys.modules, "torch.distributed", dist)
    clean_env.setitem(sys.modules, "deep_ep", types.ModuleType("deep_ep"))
    [note] = [n for n in binder.follow("6").notes if "already loaded" in n]
    assert "deep_ep" in note and "torch.distributed (NCCL)" in note
    dist.is_initialized = lambda: False
    [note] = [n for n in binder.follow("0").notes if "already loaded" in n]
    assert "torch.distributed" not in note


def test_a_first_set_after_the_library_loaded_says_so(on_machine, clean_env):
    """A pooled worker whose first task (no ``nic``) imported NIXL, then a task with
    ``nic: "auto"``: UCX may already have read UCX_NET_DEVICES (unset: all), so the
    value set now may not take effect, and the record must say so, as it does on a
    follow. It said nothing: the check looked only at values ray-numa had set before."""
    on_machine("dgx-h100-net")
    binder = Binder()
    binder.bind(parse("auto"), ["0"], pooled=True)
    clean_env.setitem(sys.modules, "nixl", types.ModuleType("nixl"))
    binding = binder.bind(AUTO, ["1"], pooled=True)
    assert binding.nic == ("mlx5_3:1",)
    assert any("nixl already loaded" in n for n in binding.notes), binding.notes
