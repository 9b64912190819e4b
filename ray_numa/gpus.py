"""This machine's GPUs, as the CUDA driver would enumerate them, and their NUMA nodes.

What a CUDA device id means once the list is known lives in :mod:`ray_numa.cuda_ids`,
which this module builds on (its :class:`~ray_numa.cuda_ids.Gpu`); callers import
those names from there, not from here.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from . import environment
from .cuda_ids import Gpu
from .sysfs import driver_numa_node, nodes_within, read_cpus, read_int, read_sysfs

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")  # VGA and 3D controllers: NVIDIA's GPUs
#: Vendors whose GPUs Ray may count (AMD through ROCm, Intel through oneAPI) but
#: ray-numa does not bind: named when a process asks for a GPU that only they have.
OTHER_GPU_VENDORS = {"0x1002": "AMD", "0x8086": "Intel"}
#: PCI base classes of GPUs and GPU-like accelerators (AMD Instinct cards present
#: themselves as processing accelerators), the ones hwloc keeps as important
#: (``hwloc_filter_check_pcidev_subtype_important``: 0x03 display, 0x12).
GPU_BASE_CLASSES = ("0x03", "0x12")


def normalize_bus_id(bus_id: Any) -> str:
    """NVML's ``00000000:18:00.0`` to sysfs's ``0000:18:00.0``."""
    text = bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id)
    domain, _, rest = text.strip().lower().partition(":")
    return f"{int(domain, 16):04x}:{rest}"


def _nvml_call(nvml: Any, name: str, *args: Any) -> Any:
    """An optional NVML query: None when the driver or the bindings lack it.

    ``nvidia-ml-py`` before 12.550.52 has no ``nvmlDeviceGetNumaNodeId`` at all, and
    an old driver answers NOT_SUPPORTED or FUNCTION_NOT_FOUND; all mean "no answer".
    """
    func = getattr(nvml, name, None)
    if func is None:
        return None
    try:
        return func(*args)
    except nvml.NVMLError:
        return None


class NvmlUnusable(Exception):
    """NVML answered, but not well enough to trust its list of GPUs."""


def _nvml_gpu(nvml: Any, handle: Any, index: int) -> Gpu:
    """NVML device ``index`` from its handle; raises NVMLError where a query fails."""
    migs = []
    for m in range(_nvml_call(nvml, "nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
        mig = _nvml_call(nvml, "nvmlDeviceGetMigDeviceHandleByIndex", handle, m)
        uuid = None if mig is None else _nvml_call(nvml, "nvmlDeviceGetUUID", mig)
        if uuid is not None:
            migs.append(uuid)
    numa = _nvml_call(nvml, "nvmlDeviceGetNumaNodeId", handle)
    return Gpu(
        index=index,
        bus_id=normalize_bus_id(nvml.nvmlDeviceGetPciInfo(handle).busId),
        uuid=nvml.nvmlDeviceGetUUID(handle),
        name=nvml.nvmlDeviceGetName(handle),
        compute_capability=tuple(
            _nvml_call(nvml, "nvmlDeviceGetCudaComputeCapability", handle) or (0, 0)),
        nvml_numa_node=numa if isinstance(numa, int) and numa >= 0 else None,
        mig_uuids=tuple(migs),
    )


def nvml_gpus(nvml: Any) -> Tuple[List[Gpu], List[str]]:
    """The GPUs NVML opens, in PCI bus order, and why each other device was left
    out; raises NVMLError without a usable driver, :class:`NvmlUnusable` where
    its answer cannot be trusted.

    NVML counts every GPU of the machine, but under a device cgroup (Slurm
    ``ConstrainDevices``, a container) it answers ``NVML_ERROR_NO_PERMISSION`` for
    the handles of the GPUs this process may not open (NVIDIA/nvidia-docker#393:
    "nvml: Insufficient Permissions" in a cgroup that denies 2 of 4 GPUs; nvml.h
    documents that code for ``nvmlDeviceGetHandleByIndex`` as "the user doesn't
    have permission to talk to this device"), and the CUDA driver enumerates only
    the devices it can open. So that refusal, raised by pynvml as
    ``NVMLError_NoPermission``, leaves out that device, as CUDA does. Any other
    error (``GPU_IS_LOST``, ``UNKNOWN``, ``FUNCTION_NOT_FOUND`` for
    ``nvmlDeviceGetPciInfo`` on an old driver, from the handle or any later query)
    says nothing about whether CUDA counts the device: skipping it would shift every
    later GPU's index, so the whole answer is dropped (and sysfs, which checks each
    device file, answers instead). So is an answer that refused every device.

    NVML's own index is not guaranteed to follow the bus (it does on most boards), and
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` means bus order, so the list is sorted by bus id
    and re-indexed (see :class:`~ray_numa.cuda_ids.Gpu`).
    """
    nvml.nvmlInit()
    try:
        gpus, left_out = [], []
        count = nvml.nvmlDeviceGetCount()
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            except nvml.NVMLError_NoPermission as exc:
                left_out.append(f"NVML device {index}: {exc}")
                continue
            except nvml.NVMLError as exc:
                raise NvmlUnusable(f"NVML device {index}: {exc}") from exc
            try:
                gpus.append(_nvml_gpu(nvml, handle, index))
            except nvml.NVMLError as exc:
                raise NvmlUnusable(f"NVML device {index}: {exc}") from exc
        if count and not gpus:
            raise NvmlUnusable(f"NVML refused all {count} GPUs")
        ordered = sorted(gpus, key=lambda g: g.bus_id)
        return [g._replace(index=i) for i, g in enumerate(ordered)], left_out
    finally:
        nvml.nvmlShutdown()


def _pci_gpus(sys_root: Path) -> List[Tuple[str, str, str]]:
    """``(bus id, vendor, class)`` of every GPU-like PCI function, in PCI order."""
    found = []
    for dev in sorted((sys_root / "bus/pci/devices").glob("*")):
        vendor = (read_sysfs(dev / "vendor") or "").strip()
        klass = (read_sysfs(dev / "class") or "").strip()
        if klass[:4] in GPU_BASE_CLASSES:
            found.append((dev.name, vendor, klass))
    return found


def _nvidia_buses(sys_root: Path) -> List[str]:
    return [bus for bus, vendor, klass in _pci_gpus(sys_root)
            if vendor == NVIDIA_VENDOR and klass[:6] in GPU_CLASSES]


def driver_root() -> Path:
    """Where ``proc/driver/nvidia`` and ``dev`` are: the fixture's for a fixture
    machine (its ``sys/`` describes another machine), else ``/``."""
    root = environment.fixture_root()
    return root if root is not None and environment.simulated() else Path("/")


def _opens(bus: str, root: Path) -> Optional[str]:
    """None if this process can open GPU ``bus``'s device file, else why it cannot
    (or why that cannot be told).

    The NVIDIA driver names the file in ``/proc/driver/nvidia/gpus/<bus>/information``
    ("Device Minor: N" means ``/dev/nvidiaN``). Whether it opens is asked with
    access(2) for reading and writing, as NVML and CUDA open it: the kernel answers
    it with the same ``inode_permission`` check open(2) makes, where the device
    cgroup decides (``devcgroup_inode_permission``, also for root), without calling
    the driver's open, which initializes a GPU that is not in persistence mode.
    A fixture says "cannot open" by leaving the file out of its ``dev/``, as a
    container does with the GPUs it was not given: tests run as root, whom file
    modes never stop.
    """
    info = root / "proc/driver/nvidia/gpus" / bus / "information"
    text = read_sysfs(info)
    if text is None:
        return f"{bus}: the NVIDIA driver does not list it ({info} cannot be read)"
    minor = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("Device Minor:")), "")
    if not minor.isdigit():
        return f"{bus}: no device minor in {info}"
    if any(line.startswith("GPU Excluded:") and "Yes" in line for line in text.splitlines()):
        return f"{bus}: the NVIDIA driver excludes it (NVreg_ExcludedGpus)"
    device = root / "dev" / f"nvidia{minor}"
    if not os.access(device, os.R_OK | os.W_OK):
        reason = "missing" if not os.path.lexists(device) else "not allowed"
        return f"{bus}: this process cannot open {device} ({reason})"
    return None


def sysfs_gpus(sys_root: Path, root: Path) -> Tuple[List[Gpu], List[str]]:
    """The NVIDIA GPUs in PCI order that this process can open, and why each other
    one was left out: NVML's answer, without NVML.

    sysfs shows every GPU of the machine whatever the device cgroup allows, so each
    is counted only where :func:`_opens` says it opens (driver files under ``root``);
    where that cannot be told, it is left out with the reason, never guessed in.
    A GPU's memory node (GH200, POWER9 + V100) is the one the driver names in
    ``numa_status``, which is NVML's ``nvmlDeviceGetNumaNodeId`` answer, so a machine
    gets the same plan whether NVML loads or not.
    """
    found, left_out = [], []
    for bus in _nvidia_buses(sys_root):
        why = _opens(bus, root)
        if why is None:
            found.append(bus)
        else:
            left_out.append(why)
    status = root / "proc/driver/nvidia/gpus"
    return [Gpu(index=i, bus_id=b,
                nvml_numa_node=driver_numa_node(read_sysfs(status / b / "numa_status")))
            for i, b in enumerate(found)], left_out


def machine_gpus(gpus: Sequence[Gpu], sys_root: Path) -> List[Gpu]:
    """Every GPU of the machine in PCI order: ``gpus`` (those this process opens)
    and each other GPU bound to the ``nvidia`` driver, as sysfs lists them in
    ``bus/pci/drivers/nvidia`` (one directory read; the class file is read only for
    a function ``gpus`` does not have).

    The CPU modes that split a node among its GPUs give each GPU its share by its
    place among all the node's GPUs (``policy._share_of``), so that processes
    confined to different GPUs of one node (two Slurm jobs under
    ``ConstrainDevices``) get disjoint shares, as they do when each sees every GPU.
    GPUs bound to another driver (vfio-pci: passed to a VM) are nobody's here;
    NVSwitches have their own driver (nvidia-nvswitch).
    """
    known = {g.bus_id for g in gpus}
    try:
        bound = os.listdir(sys_root / "bus/pci/drivers/nvidia")
    except OSError:
        return list(gpus)
    others = [Gpu(index=-1, bus_id=bus) for bus in bound
              if bus not in known and bus.count(":") == 2 and _class(sys_root, bus)[:6]
              in GPU_CLASSES]
    return sorted([*gpus, *others], key=lambda g: g.bus_id)


def _class(sys_root: Path, bus: str) -> str:
    try:
        return (sys_root / "bus/pci/devices" / bus / "class").read_text().strip()
    except OSError:
        return ""


def other_vendor_gpus(sys_root: Path) -> List[str]:
    """The GPUs of :data:`OTHER_GPU_VENDORS` in sysfs, as ``"AMD 0000:05:00.0"``."""
    return [f"{OTHER_GPU_VENDORS[vendor]} {bus}" for bus, vendor, _ in _pci_gpus(sys_root)
            if vendor in OTHER_GPU_VENDORS]


def load_nvml() -> Any:
    """pynvml, or the fixture's fake NVML when the fixture has ``nvml.json``."""
    fake = environment.fixture_file("nvml.json")
    if fake is not None:
        from .fake_nvml import FakeNvml
        return FakeNvml(fake)
    import pynvml
    return pynvml


@functools.lru_cache(maxsize=4)
def _discover(fixture: Optional[str]) -> Tuple[Tuple[Gpu, ...], str]:
    nvml = load_nvml()
    try:
        gpus, left_out = nvml_gpus(nvml)
        source = "nvml"
    except (nvml.NVMLError, NvmlUnusable) as exc:
        gpus, left_out = sysfs_gpus(environment.sys_root(), driver_root())
        source = f"sysfs (NVML unavailable: {exc})"
    if left_out:
        source += (f"; {len(left_out)} GPU(s) left out, which this process cannot "
                   f"open or ray-numa cannot tell: {'; '.join(left_out)}")
        environment.logger().debug("GPUs from %s", source)
    return tuple(gpus), source


def discover_gpus() -> Tuple[Tuple[Gpu, ...], str]:
    """The GPUs this process can open, in PCI order, and where the list came from
    (and what it left out); cached. A Ray worker takes the agent's table instead:
    :func:`ray_numa.gpu_table.node_gpus`."""
    return _discover(os.environ.get(environment.FIXTURE_ENV))


def pci_numa_node_read(bus_id: str, sys_root: Path,
                       nodes: Optional[Mapping[int, Any]] = None) -> Tuple[Optional[int], str]:
    """sysfs ``numa_node`` of a PCI function, and why there is none: "" when there is
    one; else whether the file is missing (a kernel without NUMA, a device that is not
    there), says -1 (the firmware's ACPI tables give the device no proximity) or holds
    no number. NULs and whitespace are ignored, as hwloc reads it
    (``hwloc_linuxfs_read_osdev_numa_node`` in hwloc/topology-linux.c).

    Where it has none and ``nodes`` (the topology's, id -> node with ``cpus``) are
    given, the one node the function's ``local_cpus`` (else ``local_cpulist``) holds
    (:func:`~ray_numa.sysfs.nodes_within`): hwloc places every PCI device by
    ``local_cpus`` (``hwloc_linux_backend_get_pci_busid_cpuset``), and POWER9's GPUs
    have no ``numa_node`` file at all. Read only for such a function, so a machine
    whose firmware places its devices opens nothing more.
    """
    device = sys_root / "bus/pci/devices" / bus_id
    text = read_sysfs(device / "numa_node")
    value = read_int(text)
    if value is not None and value >= 0:
        return value, ""
    if text is None:
        why = f"{bus_id} has no sysfs numa_node"
    elif value is None:
        why = f"{bus_id}'s sysfs numa_node is not a number ({text.strip()[:20]!r})"
    else:
        why = f"{bus_id}'s sysfs numa_node is {value} (firmware gave none)"
    if nodes is None:
        return None, why
    local = read_cpus([], device, "local_cpus", "local_cpulist")
    found = nodes_within(local, {n: v.cpus for n, v in nodes.items()})
    if len(found) == 1:
        return found[0], ""
    where = (f"its local_cpus hold nodes {','.join(map(str, found))}" if found else
             "its local_cpus do not place it (missing, or every CPU)")
    return None, f"{why}, and {where}"


def pci_numa_node(bus_id: str, sys_root: Path,
                  nodes: Optional[Mapping[int, Any]] = None) -> Optional[int]:
    """sysfs ``numa_node`` of a PCI function (else its ``local_cpus``' node where
    ``nodes`` are given); None when it has none (:func:`pci_numa_node_read` says why)."""
    return pci_numa_node_read(bus_id, sys_root, nodes)[0]


def gpu_numa_node(gpu: Gpu, sys_root: Path,
                  nodes: Optional[Mapping[int, Any]] = None) -> Optional[int]:
    """NVML's node for the GPU (GPU memory nodes on Grace systems), else sysfs's.

    An NVML answer that is not an online node of the topology (``nodes``: id -> node
    with ``cpus``; firmware or driver quirks) is not trusted: the PCI device's sysfs
    ``numa_node`` is used, else its ``local_cpus`` (:func:`pci_numa_node_read`).
    """
    if gpu.nvml_numa_node is not None and (nodes is None or gpu.nvml_numa_node in nodes):
        return gpu.nvml_numa_node
    return pci_numa_node(gpu.bus_id, sys_root, nodes)
