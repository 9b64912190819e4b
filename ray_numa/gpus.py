"""Which physical GPU a CUDA device id means, and which NUMA node it sits on.

CUDA numbers devices FASTEST_FIRST unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; NVML
always enumerates in PCI order; ``CUDA_VISIBLE_DEVICES`` may hold indices, ``GPU-``
UUIDs (or unique prefixes) and ``MIG-`` ids, and CUDA ignores everything from the
first entry it cannot resolve. vLLM's simple path assumes index == local rank; this
module does what the CUDA runtime does instead.
"""
from __future__ import annotations

import functools
import os
from collections import namedtuple
from pathlib import Path
from typing import Any, Collection, List, Optional, Sequence, Tuple

from . import environment
from .sysfs import read_int, read_sysfs

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")  # VGA and 3D controllers


class GpuResolutionError(RuntimeError):
    """A device id that names no GPU on this machine."""


class Gpu(namedtuple("Gpu", "index bus_id uuid name compute_capability nvml_numa_node "
                     "mig_uuids", defaults=("", "", (0, 0), None, ()))):
    __slots__ = ()
    index: int                      # position in PCI bus order (not NVML's index)
    bus_id: str                     # sysfs form, e.g. 0000:18:00.0
    uuid: str                       # default ""
    name: str                       # default ""
    compute_capability: Tuple[int, int]   # default (0, 0)
    nvml_numa_node: Optional[int]   # NVML's own answer, if it has one; default None
    mig_uuids: Tuple[str, ...]      # default ()


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


def nvml_gpus(nvml: Any) -> List[Gpu]:
    """All GPUs NVML sees, in PCI bus order; raises NVMLError without a usable driver.

    NVML's own index is not guaranteed to follow the bus (it does on most boards), and
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and the peer order of the CPU split both mean
    bus order, so the list is sorted by bus id and re-indexed.
    """
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            migs = []
            for m in range(_nvml_call(nvml, "nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
                mig = _nvml_call(nvml, "nvmlDeviceGetMigDeviceHandleByIndex", handle, m)
                if mig is not None:
                    migs.append(nvml.nvmlDeviceGetUUID(mig))
            numa = _nvml_call(nvml, "nvmlDeviceGetNumaNodeId", handle)
            gpus.append(Gpu(
                index=index,
                bus_id=normalize_bus_id(nvml.nvmlDeviceGetPciInfo(handle).busId),
                uuid=nvml.nvmlDeviceGetUUID(handle),
                name=nvml.nvmlDeviceGetName(handle),
                compute_capability=tuple(
                    _nvml_call(nvml, "nvmlDeviceGetCudaComputeCapability", handle) or (0, 0)),
                nvml_numa_node=numa if isinstance(numa, int) and numa >= 0 else None,
                mig_uuids=tuple(migs),
            ))
        ordered = sorted(gpus, key=lambda g: g.bus_id)
        return [g._replace(index=i) for i, g in enumerate(ordered)]
    finally:
        nvml.nvmlShutdown()


def sysfs_gpus(sys_root: Path) -> List[Gpu]:
    """NVIDIA display/3D controllers in PCI order: NVML's order, without NVML."""
    found = []
    for dev in sorted((sys_root / "bus/pci/devices").glob("*")):
        vendor = (read_sysfs(dev / "vendor") or "").strip()
        klass = (read_sysfs(dev / "class") or "").strip()
        if vendor == NVIDIA_VENDOR and klass[:6] in GPU_CLASSES:
            found.append(dev.name)
    return [Gpu(index=i, bus_id=b) for i, b in enumerate(found)]


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
        return tuple(nvml_gpus(nvml)), "nvml"
    except nvml.NVMLError as exc:
        gpus = sysfs_gpus(environment.sys_root())
        return tuple(gpus), f"sysfs (NVML unavailable: {exc})"


def discover_gpus() -> Tuple[Tuple[Gpu, ...], str]:
    """This machine's GPUs in PCI order and where the list came from; cached.

    In a Ray worker, the table the runtime-env agent resolved for the node, so
    that NVML is initialized once per node rather than once per worker."""
    from .gpu_table import handed_over   # imports this module: import here
    return handed_over() or _discover(os.environ.get(environment.FIXTURE_ENV))


def cuda_enumeration(gpus: Sequence[Gpu], device_order: Optional[str]) -> List[Gpu]:
    """GPUs in the order CUDA numbers them.

    FASTEST_FIRST (CUDA's default) puts the most capable device first and keeps PCI
    order among equals; it only differs from PCI order on mixed-GPU machines, where
    CUDA's exact speed heuristic is approximated by compute capability.
    """
    if (device_order or "FASTEST_FIRST").upper() == "PCI_BUS_ID":
        return list(gpus)
    return sorted(gpus, key=lambda g: (tuple(-c for c in g.compute_capability), g.index))


def _strtoul(text: str) -> int:
    """The number an entry starts with, as CUDA's strtoul-style parser reads it
    ("1gpu2" is 1, "+3" is 3, "-0" is 0); -1 for none, < 0 for a negative number.
    String methods, not a regex: compiling one costs each GPU worker ~0.35 M
    instructions."""
    body = text[1:] if text[:1] in ("+", "-") else text
    digits = body[:len(body) - len(body.lstrip("0123456789"))]
    return int(text[:len(text) - len(body)] + digits) if digits else -1


def parse_visible(value: Optional[str]) -> Optional[List[str]]:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it; None when unset (all visible).

    Modelled on torch's ``_parse_visible_devices``: one kind of id per list (a list
    starting with ``GPU-`` or ``MIG-`` holds only those; otherwise ordinals), reading
    stops at the first entry that is not one (``-1``, an empty entry, a word), an
    ordinal is the number an entry starts with, and a repeated entry makes CUDA see
    no device at all.
    """
    if value is None:
        return None
    for prefix in ("GPU-", "MIG-"):
        if value.startswith(prefix):
            ids: List[str] = []
            for elem in value.split(","):
                if elem in ids:
                    return []
                if not elem.startswith(prefix):
                    break
                ids.append(elem)
            return ids
    ordinals: List[int] = []
    for elem in value.split(","):
        number = _strtoul(elem.strip())
        if number in ordinals:
            return []
        if number < 0:
            break
        ordinals.append(number)
    return [str(n) for n in ordinals]


def _match(entry: str, ordered: Sequence[Gpu]) -> Optional[Gpu]:
    if entry.isdigit():
        return ordered[int(entry)] if int(entry) < len(ordered) else None
    if entry.startswith("MIG-"):
        if "/" in entry:   # legacy MIG-GPU-<uuid>/<gi>/<ci>
            entry = entry[len("MIG-"):].split("/")[0]
        else:
            return next((g for g in ordered if entry in g.mig_uuids), None)
    hits = [g for g in ordered if g.uuid and g.uuid.startswith(entry)]
    return hits[0] if len(hits) == 1 else None     # a prefix must be unique


def resolve_visible(entries: Sequence[str], gpus: Sequence[Gpu],
                    device_order: Optional[str] = None) -> List[Gpu]:
    """Physical GPUs named by ``CUDA_VISIBLE_DEVICES``-style entries, in order.

    Like CUDA (and torch's ``_transform_uuid_to_ordinals``): entries are read by
    :func:`parse_visible`, resolution stops at the first entry that names no device
    (out of range, unknown or ambiguous id), and naming one GPU twice leaves none.
    Unlike CUDA, says so.
    """
    listed = ",".join(str(e).strip() for e in entries)
    ordered = cuda_enumeration(gpus, device_order)
    out: List[Gpu] = []
    for entry in parse_visible(listed) or []:
        gpu = _match(entry, ordered)
        if gpu is None:
            if not out:
                break
            environment.warn_once(
                f"CUDA_VISIBLE_DEVICES entry {entry!r} names no GPU; CUDA ignores it "
                "and every entry after it, and so does ray-numa")
            return out
        if gpu in out:
            raise GpuResolutionError(
                f"CUDA devices {listed!r} name GPU {gpu.index} twice, so CUDA sees none")
        out.append(gpu)
    if not out:
        raise GpuResolutionError(
            f"CUDA device {listed!r} names none of this machine's "
            f"{len(gpus)} GPU(s) ({_describe(gpus)}) as CUDA reads it")
    return out


def visible_entry(logical: int, visible: Optional[str]) -> str:
    """The node-level device id behind ``cuda:<logical>`` in a process whose
    ``CUDA_VISIBLE_DEVICES`` is ``visible`` (unset: ids are CUDA indices)."""
    entries = parse_visible(visible)
    if entries is None:
        return str(logical)
    if not 0 <= logical < len(entries):
        read = f"; CUDA reads it as {','.join(entries) or 'no device'}" \
            if ",".join(entries) != visible else ""
        raise GpuResolutionError(
            f"cuda:{logical} does not exist: {len(entries)} GPU(s) visible "
            f"(CUDA_VISIBLE_DEVICES={visible!r}{read})")
    return entries[logical]


def pci_numa_node_read(bus_id: str, sys_root: Path) -> Tuple[Optional[int], str]:
    """sysfs ``numa_node`` of a PCI function, and why there is none: "" when there is
    one; else whether the file is missing (a kernel without NUMA, a device that is not
    there), says -1 (the firmware's ACPI tables give the device no proximity) or holds
    no number. NULs and whitespace are ignored, as hwloc reads it
    (``hwloc_linuxfs_read_osdev_numa_node`` in hwloc/topology-linux.c)."""
    path = sys_root / "bus/pci/devices" / bus_id / "numa_node"
    text = read_sysfs(path)
    if text is None:
        return None, f"{bus_id} has no sysfs numa_node"
    value = read_int(text)
    if value is None:
        return None, f"{bus_id}'s sysfs numa_node is not a number ({text.strip()[:20]!r})"
    if value < 0:
        return None, f"{bus_id}'s sysfs numa_node is {value} (firmware gave none)"
    return value, ""


def pci_numa_node(bus_id: str, sys_root: Path) -> Optional[int]:
    """sysfs ``numa_node`` of a PCI function; None when it has none
    (:func:`pci_numa_node_read` says why)."""
    return pci_numa_node_read(bus_id, sys_root)[0]


def gpu_numa_node(gpu: Gpu, sys_root: Path,
                  online: Optional[Collection[int]] = None) -> Optional[int]:
    """NVML's node for the GPU (GPU memory nodes on Grace systems), else sysfs's.

    An NVML answer that is not an online node of the topology (``online``; firmware
    or driver quirks) is not trusted: the PCI device's sysfs ``numa_node`` is used.
    """
    if gpu.nvml_numa_node is not None and (online is None or gpu.nvml_numa_node in online):
        return gpu.nvml_numa_node
    return pci_numa_node(gpu.bus_id, sys_root)


def _describe(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"{g.index}:{g.bus_id}" for g in gpus) or "none"
