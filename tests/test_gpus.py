"""CUDA id -> physical GPU -> NUMA node, against fixture machines and the fake NVML."""
import pynvml
import pytest

from ray_numa import gpus
from ray_numa.fake_nvml import FakeNvml
from ray_numa.gpus import (GpuResolutionError, cuda_enumeration, gpu_numa_node,
                           normalize_bus_id, resolve_visible, visible_entry)


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
