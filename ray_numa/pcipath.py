"""GPU-to-NIC distance classes and the NIC(s) each GPU should use (pure).

Classes as ``nvidia-smi topo -m`` prints them (NVML's ``nvmlGpuTopologyLevel_t``):

- PIX: through one PCIe switch;
- PXB: through several switches, no host bridge;
- PHB: through the host bridge both sit under (the root complex, ``pciDDDD:BB``);
- NODE: through the interconnect between host bridges of one NUMA node;
- SYS: across NUMA nodes (the SMP interconnect, UPI / xGMI / Grace C2C).

NCCL computes the same paths (``src/graph/paths.cc``, ``ncclTopoSetPaths``): a
GPU-switch or switch-NIC link is ``PATH_PIX``, a switch-switch hop makes it
``PATH_PXB``, a hop through a CPU node makes it ``PATH_PHB``, a CPU-CPU link
``PATH_SYS`` (``src/graph/topo.h``). NCCL's CPU node is a NUMA node, so it has no
NODE: nvidia-smi's PHB and NODE are both NCCL's ``PATH_PHB``, and they rank equal
here when choosing.

Choosing (``src/graph/topo.cc``): ``ncclTopoGetLocal`` keeps, for a GPU, the NICs
with the highest path bandwidth and then the best path type; ``ncclTopoGetLocalNetType``
spreads GPUs sharing those NICs: ``netsPerGpu = DIVUP(nets, gpus)`` (policy AUTO),
the first NIC at ``gpu.dev % gpus``, bit-mirrored when the NIC count is a power of
two (``mirrorBits``), then ``netsPerGpu`` consecutive ones. ``gpu.dev`` is the NVML
index (``ncclTopoGetXmlFromGpu`` in ``src/graph/xml.cc``), the PCI-order index here.
NCCL counts only the GPUs of its communicator (``ncclTopoTrimSystem``); this counts
every GPU of the machine, i.e. a job that uses them all, as a node's Ray workers do.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Dict, List, Optional, Sequence, Tuple

from .nics import PciPlace, Port, RdmaNic

CLASSES = ("PIX", "PXB", "PHB", "NODE", "SYS")
#: NCCL's path type for each class (``topo.h``: PIX 4, PXB 5, PHB 8, SYS 9).
NCCL_PATH = {"PIX": 4, "PXB": 5, "PHB": 8, "NODE": 8, "SYS": 9}


def path_class(a: PciPlace, b: PciPlace) -> str:
    """The class of the PCI path between two devices (order does not matter)."""
    for i, switch in enumerate(a.switches):
        if switch in b.switches:
            hops = i + b.switches.index(switch) + 1     # PCI nodes on the path
            return "PIX" if hops == 1 else "PXB"
    if a.host_bridge and a.host_bridge == b.host_bridge:
        return "PHB"
    # NCCL puts both under one CPU node when their numa_node is equal, -1 included
    return "NODE" if a.numa_node == b.numa_node else "SYS"


class Net(namedtuple("Net", "nic port")):
    """One NCCL net device: an RDMA device's port (``mlx5_0:1``)."""
    __slots__ = ()
    nic: RdmaNic
    port: Port

    @property
    def name(self) -> str:
        return f"{self.nic.name}:{self.port.number}"


def _atoi(text: str) -> int:
    """C's ``atoi``: leading blanks, a sign and digits; 0 if none."""
    head = text.lstrip(" \t\n\v\f\r")
    sign = head[:1] if head[:1] in "+-" else ""
    digits = head[len(sign):]
    digits = digits[:len(digits) - len(digits.lstrip("0123456789"))]
    return int(sign + digits) if digits else 0


def _hca_matches(spec: str, net: Net) -> bool:
    """Whether NCCL_IB_HCA (its ``^`` taken off) names ``net``, as NCCL reads it
    (``parseStringList``/``matchIfList`` in src/misc/utils.cc): comma-separated
    ``name[:port]`` taken character for character (a space is part of a name), the
    port as ``atoi`` reads it, prefixes unless the list starts with ``=``; an empty
    list names every port."""
    exact = spec.startswith("=")
    items = [i.partition(":") for i in (spec[1:] if exact else spec).split(",")]
    items = [(name, _atoi(port) if colon else -1) for name, colon, port in items if name]
    return not items or any(
        (net.nic.name == name if exact else net.nic.name.startswith(name))
        and port in (-1, net.port.number) for name, port in items)


def compute_nets(nics: Sequence[RdmaNic], hca: str = "") -> List[Net]:
    """The ports a GPU worker may be pointed at: the compute fabric.

    1. An ACTIVE port (``ports/<n>/state``) of a device on a known PCI path: a
       cable-less or down port carries nothing.
    2. ``hca``, the job's own ``NCCL_IB_HCA``: as an allow-list, only the ports it
       names stay (the job has named its compute fabric); as an exclusion list (a
       leading ``^``, e.g. ``^mlx5_1,mlx5_7`` to keep NCCL off the storage cards) the
       ports it names go, and NCCL would not use them either.
    3. The highest known ``rate``: NCCL's ``ncclTopoGetLocal`` keeps the NICs of the
       highest path bandwidth, which a slower (storage, management) port lowers. A
       port whose rate is unknown (:class:`~ray_numa.nics.Port`) is never excluded
       by it, and never sets the top either: it counts as at the top rate.
    4. Among the ports at that top rate, InfiniBand over Ethernet: on the reference
       designs (DGX H100 BasePOD, GB200 trays) the compute fabric is InfiniBand and
       the Ethernet RDMA ports (BlueField/ConnectX in Ethernet mode) of the same rate
       carry storage and north-south traffic. Rate comes first, so one InfiniBand
       storage port does not push out a faster RoCE compute fabric.
    """
    nets = [Net(nic, p) for nic in nics if nic.place is not None
            for p in nic.ports if p.active]
    exclude = hca.startswith("^")        # NCCL's searchNot, then searchExact
    nets = [n for n in nets if _hca_matches(hca[1:] if exclude else hca, n) != exclude]
    top = max((n.port.rate_gbps for n in nets if n.port.rate_gbps is not None), default=None)
    nets = [n for n in nets if n.port.rate_gbps in (None, top)]
    if any(n.port.link_layer == "InfiniBand" and n.port.rate_gbps == top for n in nets):
        nets = [n for n in nets if n.port.link_layer == "InfiniBand"]
    return nets


class NicChoice(namedtuple("NicChoice", "gpu nets path")):
    """The net device(s) a GPU gets and the class of its path to them."""
    __slots__ = ()
    gpu: int                     # the GPU's index (PCI order)
    nets: Tuple[str, ...]        # "mlx5_0:1", ...
    path: str                    # one of CLASSES

    @property
    def devices(self) -> Tuple[str, ...]:
        return tuple(n.partition(":")[0] for n in self.nets)


def _local(place: PciPlace, candidates: Sequence[Tuple[int, PciPlace]]) -> List[int]:
    """``ncclTopoGetLocal`` over path type (bandwidth already equal: see
    :func:`compute_nets`): the candidates at the best NCCL path type, in order."""
    ranks = [NCCL_PATH[path_class(place, p)] for _, p in candidates]
    best = min(ranks, default=None)
    return [key for (key, _), r in zip(candidates, ranks) if r == best]


def _mirror_bits(val: int, pow2: int) -> int:
    """NCCL's ``mirrorBits`` (src/include/utils.h)."""
    mirror, b, mb = 0, 1, pow2 >> 1
    while b < pow2:
        if val & b:
            mirror |= mb
        b, mb = b << 1, mb >> 1
    return mirror


def choose(gpus: Sequence[Tuple[int, PciPlace]], nets: Sequence[Net]) -> Dict[int, NicChoice]:
    """Each GPU's net device(s), by ``ncclTopoGetLocalNetType``'s rule with the AUTO
    policy; ``gpus`` are (index, place) for every GPU of the machine (the spread
    depends on the others), ``nets`` from :func:`compute_nets`."""
    net_places = [(i, n.nic.place) for i, n in enumerate(nets)]
    out: Dict[int, NicChoice] = {}
    for index, place in gpus:
        local = _local(place, net_places)
        if not local:
            continue
        local_gpus = _local(nets[local[0]].nic.place, list(gpus))
        per_gpu = -(-len(local) // max(len(local_gpus), 1))
        first = index % max(len(local_gpus), 1)
        if len(local) & (len(local) - 1) == 0:
            first = _mirror_bits(first, len(local))
        picked = [nets[local[(first + c) % len(local)]] for c in range(per_gpu)]
        out[index] = NicChoice(gpu=index, nets=tuple(n.name for n in picked),
                               path=path_class(place, picked[0].nic.place))
    return out


def matrix(gpus: Sequence[Tuple[int, PciPlace]],
           nics: Sequence[RdmaNic]) -> List[List[Optional[str]]]:
    """``nvidia-smi topo -m``'s GPU x NIC block: one row per GPU, one class per NIC
    (None where a NIC's PCI place is unknown)."""
    return [[path_class(place, nic.place) if nic.place else None for nic in nics]
            for _, place in gpus]
