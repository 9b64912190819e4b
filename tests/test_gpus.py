"""CUDA id -> physical GPU -> NUMA node, against fixture machines and the fake NVML."""
import json

import pynvml
import pytest

from ray_numa import gpus
from ray_numa.fake_nvml import FakeNvml
from ray_numa.cuda_ids import (GpuResolutionError, cuda_enumeration, parse_visible,
                               resolve_visible, visible_entry)
from ray_numa.gpus import gpu_numa_node, normalize_bus_id
from ray_numa.topology import read_topology


def _machine(on_machine, name):
    root = on_machine(name)
    found, source = gpus.discover_gpus()
    assert source == "nvml"
    return root, found


def test_bus_id_forms():
    assert normalize_bus_id(b"00000000:9A:00.0") == "0000:9a:00.0"
    assert normalize_bus_id("0001:18:00.0") == "0001:18:00.0"


def test_fake_nvml_raises_pynvml_errors(machine_tree):
    nvml = FakeNvml(machine_tree("dgx-h100") / "nvml.json")
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetNumaNodeId(nvml.nvmlDeviceGetHandleByIndex(0))
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByUUID("GPU-nope")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(8)
    assert isinstance(nvml.nvmlDeviceGetPciInfo(nvml.nvmlDeviceGetHandleByIndex(7)),
                      pynvml.nvmlPciInfo_t)
    nvml.nvmlShutdown()


def test_dgx_gpus_in_pci_order_with_sysfs_nodes(on_machine):
    root, found = _machine(on_machine, "dgx-h100")
    assert [g.bus_id for g in found][:2] == ["0000:18:00.0", "0000:2a:00.0"]
    assert [gpu_numa_node(g, root / "sys") for g in found] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_gb200_prefers_nvml_memory_node_over_pci_node(on_machine):
    root, found = _machine(on_machine, "gb200")
    assert [gpu_numa_node(g, root / "sys") for g in found] == [2, 10, 18, 26]


def test_numa_node_minus_one_is_unknown(on_machine):
    root, found = _machine(on_machine, "workstation")
    assert [gpu_numa_node(g, root / "sys") for g in found] == [None, None]


def test_fastest_first_vs_pci_bus_id(on_machine):
    _, found = _machine(on_machine, "mixed")
    assert [g.bus_id[5:7] for g in cuda_enumeration(found, None)] == ["b3", "17", "65"]
    assert [g.bus_id[5:7] for g in cuda_enumeration(found, "PCI_BUS_ID")] == ["17", "65", "b3"]
    assert resolve_visible(["0"], found)[0].name == "NVIDIA H100 PCIe"
    assert resolve_visible(["0"], found, "PCI_BUS_ID")[0].name == "NVIDIA RTX A2000"


def test_uuid_prefix_mig_and_invalid_entries(on_machine):
    _, found = _machine(on_machine, "dgx-a100-mig")
    six = found[6].uuid
    assert resolve_visible([six[:14]], found)[0].index == 6          # unique prefix
    assert resolve_visible([found[5].mig_uuids[0]], found)[0].index == 5
    assert resolve_visible([f"MIG-{found[0].uuid}/1/0"], found)[0].index == 0
    # CUDA stops at the first entry naming no device
    assert [g.index for g in resolve_visible(["3", "GPU-ffff", "4"], found)] == [3]
    with pytest.raises(GpuResolutionError, match="names none"):
        resolve_visible(["GPU-0000000"], found)                      # ambiguous prefix
    with pytest.raises(GpuResolutionError):
        resolve_visible(["9"], found)


def test_logical_index_through_visible_devices(on_machine):
    _, found = _machine(on_machine, "dgx-h100")
    assert resolve_visible([visible_entry(1, "6,2")], found)[0].index == 2
    assert visible_entry(3, None) == "3"
    assert visible_entry(0, "GPU-abc, 1") == "GPU-abc"
    with pytest.raises(GpuResolutionError, match="cuda:2 does not exist"):
        visible_entry(2, "6,2")


def _real_nvml_works():
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_real_nvml_works(), reason="a real NVML driver answers on this machine")
def test_no_driver_falls_back_to_sysfs_listing(on_machine, tmp_path):
    root = on_machine("dgx-h100")
    (root / "nvml.json").rename(tmp_path / "nvml.json")
    try:
        gpus._discover.cache_clear()
        found, source = gpus.discover_gpus()
        assert source.startswith("sysfs (NVML unavailable")
        assert [g.bus_id for g in found] == [f"0000:{b}:00.0" for b in
                                             ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")]
    finally:
        (tmp_path / "nvml.json").rename(root / "nvml.json")


# torch's TestVisibleDeviceParses.test_env_var_parsing, pytorch/pytorch
# test/test_cuda_nvml_based_avail.py (commit 4d5726998be454aa7971b4fca7458a114a8e5f03),
# which models CUDA's own reading of CUDA_VISIBLE_DEVICES; plus the case.
VISIBLE_CASES = [
    ("1gpu2,2ampere", ["1", "2"]),           # rest of the string is ignored
    ("0, 1, 2, -1, 3", ["0", "1", "2"]),      # negatives abort parsing
    ("0, 1, 2, 1", []),                       # double mention: empty set
    ("2, +3, -0, 5", ["2", "3", "0", "5"]),   # unary pluses and minuses
    ("one,two,3,4", []),                      # random string is used as empty set
    ("4,3,two,one", ["4", "3"]),              # random string is used as separator
    ("GPU-9e8d35e3", ["GPU-9e8d35e3"]),       # GPU ids are parsed
    ("GPU-123, 2", ["GPU-123"]),              # ordinals are not included in GPU-id set
    ("MIG-89c850dc", ["MIG-89c850dc"]),       # MIG ids are parsed
    ("0,-1,5", ["0"]),                        # issue 8: only device 0 visible
    ("0,,1", ["0"]),                          # an empty entry stops reading too
]


@pytest.mark.parametrize("value,entries", VISIBLE_CASES)
def test_visible_devices_read_as_cuda_does(value, entries):
    assert parse_visible(value) == entries


def test_visible_devices_resolution_like_torch(on_machine):
    """torch's test_partial_uuid_resolver / test_ordinal_parse_visible_devices rules:
    first unknown or ambiguous id stops, one GPU named twice leaves none."""
    _, found = _machine(on_machine, "dgx-h100")
    u = [g.uuid for g in found]
    assert [g.index for g in resolve_visible([u[6][:14], u[2]], found)] == [6, 2]
    assert [g.index for g in resolve_visible(["1", "9", "0"], found)] == [1]
    with pytest.raises(GpuResolutionError, match="twice"):
        resolve_visible([u[6], u[5], u[6][:14]], found)
    with pytest.raises(GpuResolutionError, match="names none"):
        resolve_visible(["0", "1", "0"], found)              # CUDA: no device at all
    with pytest.raises(GpuResolutionError, match="1 GPU"):
        visible_entry(1, "0,-1,5")


def test_nvml_node_that_is_not_online_falls_back_to_sysfs(machine_tree):
    root = machine_tree("gb200")
    gpu = gpus.Gpu(index=0, bus_id="0000:01:00.0", nvml_numa_node=40)
    nodes = read_topology(root / "sys").nodes
    assert 40 not in nodes and gpu_numa_node(gpu, root / "sys", nodes) == 0   # PCI numa_node
    assert gpu_numa_node(gpu, root / "sys") == 40       # no topology given: NVML's


class _OldBindings:
    """pynvml as nvidia-ml-py 12.535 ships it: no nvmlDeviceGetNumaNodeId at all."""

    def __init__(self, nvml):
        self._nvml = nvml

    def __getattr__(self, name):
        if name == "nvmlDeviceGetNumaNodeId":
            raise AttributeError(name)
        return getattr(self._nvml, name)


def test_missing_nvml_function_is_not_supported(machine_tree):
    nvml = FakeNvml(machine_tree("gb200") / "nvml.json")
    found, left_out = gpus.nvml_gpus(_OldBindings(nvml))
    assert len(found) == 4 and all(g.nvml_numa_node is None for g in found) and not left_out


def test_gpus_are_listed_in_bus_order_whatever_nvml_index(machine_tree, tmp_path):
    spec = json.loads((machine_tree("dgx-h100") / "nvml.json").read_text())
    spec["devices"].reverse()                  # NVML index 0 = bus db
    (tmp_path / "nvml.json").write_text(json.dumps(spec))
    found, _ = gpus.nvml_gpus(FakeNvml(tmp_path / "nvml.json"))
    assert [g.bus_id[5:7] for g in found] == ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]
    assert [g.index for g in found] == list(range(8))


def test_launcher_uses_the_only_visible_gpu_whatever_the_local_rank(on_machine, monkeypatch):
    """Item 11: Slurm --gpus-per-task=1 gives SLURM_LOCALID=5 CUDA_VISIBLE_DEVICES=5."""
    from ray_numa.launcher import bind_current_process
    on_machine("dgx-h100")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    b = bind_current_process()
    assert b.status == "bound" and b.cpus == "56-111,168-223"
    assert b.gpu_rule == "only visible GPU" and b.gpus == ("5",)


def test_launcher_local_rank_rule_is_recorded(on_machine, monkeypatch):
    from ray_numa.launcher import bind_current_process
    on_machine("dgx-h100")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "6,2,-1,3")
    b = bind_current_process()
    assert b.status == "skipped" and b.gpu_rule == "local rank"
    assert "cuda:2 does not exist: 2 GPU(s) visible" in b.reason
    assert "CUDA reads it as 6,2" in b.reason
