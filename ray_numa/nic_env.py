"""Point a GPU worker's RDMA libraries at its GPU's own NIC, through their variables.

``numa_bind: {"nic": "auto"}``: the NIC(s) NCCL's rules give the GPU
(:mod:`ray_numa.pcipath`) go into the variables each library reads once, when it
initializes, in its own syntax:

- ``UCX_NET_DEVICES=mlx5_0:1`` (UCX, and NIXL's UCX backend: ``device:port`` list);
- ``NVSHMEM_HCA_LIST=mlx5_0:1`` (NVSHMEM: ``hca[:port]`` list);
- ``UCCL_P2P_RDMA_DEV=mlx5_0`` (UCCL P2P: device names, no port);
- ``NCCL_IB_HCA==mlx5_0:1`` only when asked (the leading ``=`` is NCCL's exact-match
  prefix), since NCCL already picks a NIC per GPU and PXN uses the others.

A variable already in the environment that ray-numa did not put there (the user's,
the job's ``env_vars``) is never changed.

The one write to ``os.environ`` is :func:`_write`. It is not in :mod:`ray_numa.apply`
because apply's backend stands in for the kernel (a recording backend on fixture
machines), whereas the environment is the same object on every machine: the value
set here *is* what the test and the user observe, and it must also be undone by
value (only while it still holds what ray-numa wrote).
"""
from __future__ import annotations

import os
import sys
from collections import namedtuple
from pathlib import Path
from typing import Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from . import environment
from .cuda_ids import resolve_visible
from .gpu_table import node_gpus
from .nics import RdmaNic, pci_place, read_nics, unplaced
from .pcipath import CLASSES, NicChoice, choose, compute_nets

#: Modules that read each variable when they load or initialize: if one is already
#: imported when the value changes (a follow), the record says it may keep the old NIC.
#: DeepEP bundles NVSHMEM. NCCL reads NCCL_IB_HCA once per process (``ncclIbInit``);
#: whether it has is told by :func:`_nccl_started`, not by a module being imported.
READERS = {"UCX_NET_DEVICES": ("ucp", "ucxx", "nixl", "rixl"),
           "NVSHMEM_HCA_LIST": ("nvshmem", "deep_ep"),
           "UCCL_P2P_RDMA_DEV": ("uccl",),
           "NCCL_IB_HCA": ()}


def values(choice: NicChoice, names: Sequence[str]) -> Dict[str, str]:
    """Each variable's value for ``choice``, in its library's syntax."""
    ports, devices = ",".join(choice.nets), ",".join(dict.fromkeys(choice.devices))
    syntax = {"UCX_NET_DEVICES": ports, "NVSHMEM_HCA_LIST": ports,
              "UCCL_P2P_RDMA_DEV": devices, "NCCL_IB_HCA": "=" + ports}
    return {name: syntax[name] for name in names}


def plan(wanted: Mapping[str, str], environ: Mapping[str, str],
         ours: Mapping[str, str]) -> Tuple[Dict[str, Optional[str]], Tuple[str, ...]]:
    """What to write (None: unset) and which wanted variables to leave as found.

    A variable is ray-numa's while it still holds the value ray-numa wrote
    (``ours``); anything else present is the user's or the job's and stays.
    """
    def mine(name: str) -> bool:
        return name not in environ or environ[name] == ours.get(name)

    writes: Dict[str, Optional[str]] = {n: v for n, v in wanted.items() if mine(n)}
    kept = tuple(n for n in wanted if not mine(n))
    for name in ours:
        if name not in wanted and environ.get(name) == ours[name]:
            writes[name] = None           # set for the previous GPU, none now
    return writes, kept


class NicOutcome(namedtuple("NicOutcome", "nets path assigned ours notes")):
    __slots__ = ()
    nets: Tuple[str, ...]          # "mlx5_0:1", ...
    path: str                      # PIX | PXB | PHB | NODE | SYS | ""
    assigned: Tuple[str, ...]      # "NAME=value" as this process now has them
    ours: Dict[str, str]           # what ray-numa wrote and still owns
    notes: Tuple[str, ...]


def _dev_root() -> Path:
    """``/dev``, or the fixture's ``dev/`` on a fixture machine.

    Not :func:`environment.fixture_file`, which falls back to this machine's file
    when the fixture lacks one: a fixture without ``dev/infiniband/uverbsN`` describes
    a machine that lacks it (an RDMA-less container). Tests run as root, for whom a
    file's mode does not block an open, so a fixture says "not usable" by leaving the
    node out, not by its mode.
    """
    root = environment.fixture_root()
    return root / "dev" if root is not None and environment.simulated() else Path("/dev")


def _usable(nic: RdmaNic, dev: Path) -> bool:
    """Whether this process can use the NIC through libibverbs, which opens
    ``/dev/infiniband/uverbsN`` read-write (``ibv_open_device``). A container started
    without the RDMA devices (or whose device cgroup denies them) still sees
    ``/sys/class/infiniband``; only the open tells. Opening and closing it allocates
    no verbs context (that is the GET_CONTEXT command, which is not sent here)."""
    if not nic.verbs:
        return False
    try:
        fd = os.open(dev / "infiniband" / nic.verbs, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


def usable_nics(sys_root: Path) -> Tuple[RdmaNic, ...]:
    """The NICs this process can use (:func:`_usable`), asked before a VF or a
    software device is merged into its function's (:func:`~ray_numa.nics.read_nics`):
    what a worker chooses among, and so what ``ray-numa show`` must choose among."""
    dev = _dev_root()
    return read_nics(sys_root, lambda nic: _usable(nic, dev))


def choice_for(gpu_ids: Sequence[str], hca: str = "") -> Tuple[Optional[NicChoice], str]:
    """The NIC(s) for the GPUs named (as CUDA/Ray name them): the union of each
    GPU's, the farthest class; or None and why. ``hca``: the job's NCCL_IB_HCA
    (:func:`~ray_numa.pcipath.compute_nets`).

    Read afresh on every call (a bind, a follow, a pooled worker's next GPU), not
    cached for the process: port states change (a link goes down), and the read is a
    few dozen sysfs files. The spread depends on every GPU and NIC of the machine.
    """
    gpus, _ = node_gpus()
    chosen = resolve_visible(list(gpu_ids), gpus, os.environ.get("CUDA_DEVICE_ORDER"))
    root = environment.sys_root()
    places = {g.bus_id: pci_place(root, g.bus_id) for g in gpus}
    usable = usable_nics(root)
    nics = usable or read_nics(root)          # the latter only to say why none is
    table = choose([(g.index, places[g.bus_id]) for g in gpus if places[g.bus_id]],
                   compute_nets(usable, hca))
    picks = [table[g.index] for g in chosen if places[g.bus_id] and g.index in table]
    named = ",".join(gpu_ids)
    if not picks:
        if chosen and not any(places[g.bus_id] for g in chosen):
            return None, (f"the PCI path of GPU {named} is unknown (no "
                          f"{root}/bus/pci/devices/<bus id> link), so its NIC cannot be told")
        if nics and not usable:
            return None, ("RDMA devices are in sysfs but no verbs device "
                          f"({_dev_root()}/infiniband/uverbsN) opens read-write here (a container "
                          "without the RDMA devices?)")
        lost = () if nics else unplaced(root)
        if lost:
            return None, (f"RDMA device(s) {', '.join(lost)} have no PCI function behind them "
                          "or their netdev (a bond, VLAN, veth or USB NIC), so none can be "
                          f"matched to GPU {named}")
        return None, f"no active compute RDMA NIC for GPU {named}"
    nets = tuple(dict.fromkeys(n for p in picks for n in p.nets))
    return NicChoice(gpu=picks[0].gpu, nets=nets,
                     path=max((p.path for p in picks), key=CLASSES.index)), ""


def _nccl_started() -> bool:
    """torch.distributed has a process group, so NCCL may already have read
    NCCL_IB_HCA. Read from ``sys.modules`` only: importing torch costs seconds."""
    dist = sys.modules.get("torch.distributed")
    try:
        return bool(dist is not None and dist.is_initialized())
    except Exception:
        return False


def _write(writes: Mapping[str, Optional[str]],
           environ: MutableMapping[str, str]) -> None:
    for name, value in writes.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value


def settle(names: Sequence[str], gpu_ids: Sequence[str], ours: Mapping[str, str],
           environ: Optional[MutableMapping[str, str]] = None) -> NicOutcome:
    """Set ``names`` for the GPUs' NIC(s) (unset what was set for earlier GPUs when
    there are none now) and say what happened. Never raises: a machine whose NICs
    cannot be read gets a note, and its variables stay as they were."""
    environ = os.environ if environ is None else environ
    notes = []
    # the job's NCCL_IB_HCA names its compute fabric; ray-numa's own value does not
    hca = environ.get("NCCL_IB_HCA", "")
    hca = "" if hca == ours.get("NCCL_IB_HCA") else hca
    choice, why = None, ""
    try:
        if gpu_ids and names:
            choice, why = choice_for(gpu_ids, hca)
    except Exception as exc:         # unreadable GPUs or sysfs: leave everything
        return NicOutcome((), "", (), dict(ours),
                          (f"nic: not chosen ({type(exc).__name__}: {exc})",))
    if why:
        notes.append(f"nic: {why}; {', '.join(names)} left as they were")
    wanted = values(choice, names) if choice else {}
    writes, kept = plan(wanted, environ, ours)
    # a value that changes (first set included: a pooled worker's earlier task may
    # have loaded the library, which then read it unset) after its reader loaded
    changed = [n for n, v in writes.items() if environ.get(n) != v]
    loaded = [m for n in changed for m in READERS.get(n, ()) if m in sys.modules]
    if "NCCL_IB_HCA" in changed and _nccl_started():
        loaded.append("torch.distributed (NCCL)")
    if loaded:
        notes.append(f"nic: {', '.join(sorted(set(loaded)))} already loaded before the NIC "
                     "changed: it may keep the NIC it read at initialization")
    notes += [f"nic: {n} already set to {environ[n]!r} (by the user or job): left as is"
              for n in kept]
    _write(writes, environ)
    mine = {n: v for n, v in {**ours, **writes}.items()
            if v is not None and environ.get(n) == v}
    assigned = tuple(f"{n}={environ[n]}" for n in names if n in environ)
    return NicOutcome(choice.nets if choice else (), choice.path if choice else "",
                      assigned, mine, tuple(notes))


def audit_warnings(binding: Mapping, environ: Mapping[str, str], sys_root: Path) -> List[str]:
    """What ``ray-numa audit`` says about a GPU worker's NIC: a chosen NIC across
    sockets (SYS), or ``UCX_NET_DEVICES=all`` (as ray-numa recorded it, else as the
    process started with it; unset is UCX's default, ``all``) on a node with several
    compute NICs, where UCX would spread the GPU's traffic over NICs on both sockets."""
    if not binding.get("gpus"):
        return []
    out = []
    nics = read_nics(sys_root)
    if binding.get("nic_path") == "SYS":
        names = binding.get("nic") or ()
        unknown = any(n.place and n.place.numa_node < 0 for n in nics
                      if any(c.partition(":")[0] == n.name for c in names))
        out.append(f"nic: {','.join(names)} is "
                   + ("SYS from its GPU: the NIC's NUMA node is unknown (numa_node -1)"
                      if unknown else "across sockets (SYS) from its GPU"))
    recorded = dict(v.split("=", 1) for v in binding.get("nic_vars") or ())
    ucx = recorded.get("UCX_NET_DEVICES", environ.get("UCX_NET_DEVICES"))
    if ucx is None or ucx == "all":
        count = len({n.nic.name for n in compute_nets(nics)})
        if count > 1:
            shown = " unset (UCX default: all)" if ucx is None else "=all"
            out.append(f"nic: UCX_NET_DEVICES{shown} on a node with {count} RDMA NICs; "
                       'numa_bind {"nic": "auto"} sets the GPU\'s own')
    return out
