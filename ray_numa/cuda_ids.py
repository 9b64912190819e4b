"""Which GPU of a list a CUDA device id means: the value class and CUDA's rules.

CUDA numbers devices FASTEST_FIRST unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``; NVML
always enumerates in PCI order; ``CUDA_VISIBLE_DEVICES`` may hold indices, ``GPU-``
UUIDs (or unique prefixes) and ``MIG-`` ids, and CUDA ignores everything from the
first entry it cannot resolve. vLLM's simple path assumes index == local rank; this
module does what the CUDA runtime does instead.

Pure string and list work over :class:`Gpu` values, below both the discovery
(:mod:`ray_numa.gpus`) and the table the agent hands a worker
(:mod:`ray_numa.gpu_table`), which both need it.
"""
from __future__ import annotations

from collections import namedtuple
from typing import List, Optional, Sequence, Tuple

from . import environment


class GpuResolutionError(RuntimeError):
    """A device id that names no GPU on this machine."""


class Gpu(namedtuple("Gpu", "index bus_id uuid name compute_capability nvml_numa_node "
                     "mig_uuids", defaults=("", "", (0, 0), None, ()))):
    """A GPU this process can open, as CUDA would count it.

    ``index`` is the GPU's place in PCI bus order among the GPUs this process can
    open: what a ``CUDA_VISIBLE_DEVICES`` ordinal means under
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. It is not NVML's index: NVML counts every GPU
    of the machine, also those a device cgroup (Slurm ``ConstrainDevices``, a
    container) keeps this process from opening, while the CUDA driver enumerates
    only the devices it can open, so in a job given GPUs 4-7 of eight ``cuda:0``
    is the machine's GPU 4 and has index 0 here.
    """
    __slots__ = ()
    index: int                      # see above
    bus_id: str                     # sysfs form, e.g. 0000:18:00.0
    uuid: str                       # default ""
    name: str                       # default ""
    compute_capability: Tuple[int, int]   # default (0, 0)
    #: NVML's own answer, if it has one (without NVML: the node the driver's
    #: numa_status names, the same number); default None
    nvml_numa_node: Optional[int]
    mig_uuids: Tuple[str, ...]      # default ()


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


def _describe(gpus: Sequence[Gpu]) -> str:
    return ", ".join(f"{g.index}:{g.bus_id}" for g in gpus) or "none"
