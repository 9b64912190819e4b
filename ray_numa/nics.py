"""RDMA network cards and where PCI devices sit, read from sysfs.

Pure readers over a ``/sys``-shaped root, like :mod:`ray_numa.topology`: every file
may be missing, empty or odd (hwloc's ``topology-linux.c`` reads the same tree the
same way), and a machine this cannot read yields fewer facts, never an exception.

Facts relied on (all world-readable):

- ``class/infiniband/<dev>/device``: a link to the RDMA device's PCI function
  (InfiniBand HCAs and RoCE NICs alike: the kernel's ib_core registers both), or to
  a device below it (an auxiliary device), placed at the nearest PCI function;
- ``class/infiniband/<dev>/ports/<n>/state`` (``4: ACTIVE``), ``link_layer``
  (``InfiniBand`` | ``Ethernet``) and ``rate`` (``400 Gb/sec (4X NDR)``);
- ``class/infiniband/<dev>/device/net/*``: the netdev(s) of the function (RoCE);
- ``bus/pci/devices/<bdf>``: a link into ``devices/pciDDDD:BB/<root port>/.../<bdf>``,
  whose components are the PCI bridges between the device and its host bridge;
- ``bus/pci/devices/<bdf>/numa_node``: the device's NUMA node (-1: unknown);
- ``bus/pci/devices/<bdf>/physfn``: present on an SR-IOV virtual function
  (the kernel's link to its physical function), absent on the physical one;
- ``class/infiniband/<dev>/device/infiniband_verbs/uverbs<N>``: the verbs device
  (``/dev/infiniband/uverbs<N>``) through which user space (libibverbs) uses it;
  else ``class/infiniband_verbs/uverbs<N>/ibdev``, the device's name (the kernel's
  ``ibdev_show``), which is there for every device, software ones included;
- a software RoCE device (``rdma_rxe``) has no ``device`` link (the kernel registers
  it under ``devices/virtual/infiniband``); its traffic goes through the netdev of its
  port's GIDs, ``ports/<n>/gid_attrs/ndevs/0`` (Documentation/ABI/stable/
  sysfs-class-infiniband), whose ``class/net/<netdev>/device`` leads to the PCI
  function it is placed at.
"""
from __future__ import annotations

import os
import re
from collections import namedtuple
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from .sysfs import listdir, read_int, read_sysfs

_BDF = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
#: ``rate`` as the kernel's ``rate_show`` (drivers/infiniband/core/sysfs.c) writes
#: it: "%d%s Gb/sec (%dX%s)", e.g. "400 Gb/sec (4X NDR)", "2.5 Gb/sec (1X SDR)".
_RATE = re.compile(r"^(\d+(?:\.\d+)?) Gb/sec")


def _text(path: Path) -> str:
    """The file's text without the NULs and whitespace a sysfs attribute may carry."""
    return (read_sysfs(path) or "").replace("\0", "").strip()


def bdf_order(bdf: str) -> int:
    """A PCI address as one integer (domain, bus, device, function), the order NCCL
    numbers its IB devices in: ``ncclIbCompareDevs`` (``net_ib/init.cc``, with
    ``NCCL_IB_DEVICE_PCI_ORDER=1``, the default) compares ``pciPathToInt64`` of the
    PCI path, and ``xml.cc`` keeps a PCI node's children sorted by bus id."""
    domain, bus, devfn = bdf.split(":")
    device, function = devfn.split(".")
    return (int(domain, 16) << 16) | (int(bus, 16) << 8) | (int(device, 16) << 3) | int(function)


class PciPlace(namedtuple("PciPlace", "bdf host_bridge switches numa_node")):
    """Where a PCI function sits.

    ``switches``: the PCI nodes NCCL builds above the device, nearest first. NCCL's
    ``ncclTopoGetXmlFromSys`` (src/graph/xml.cc) walks the sysfs path upwards two
    components at a time ("Rewind two '/' and follow the upper PCI switch"), so a
    switch's downstream port and the root port are skipped and each switch is one
    node, named by its upstream port; it stops where the component above is not a
    BDF (``pci0000:00``, the host bridge, which NCCL turns into the CPU node).
    """
    __slots__ = ()
    bdf: str
    host_bridge: str              # e.g. "pci0000:15"; "" when the path is unknown
    switches: Tuple[str, ...]
    numa_node: int                # -1: unknown


def pci_place(sys_root: Path, bdf: str) -> Optional[PciPlace]:
    """The place of PCI function ``bdf`` (sysfs form), or None if sysfs lacks it."""
    link = sys_root / "bus/pci/devices" / bdf
    try:
        target = os.path.normpath(os.path.join(link.parent, os.readlink(link)))
    except OSError:
        return None
    parts = target.split(os.sep)
    roots = [i for i, p in enumerate(parts) if p.startswith("pci") and ":" in p]
    if not roots or parts[-1] != bdf:
        return None
    chain = parts[roots[-1] + 1:]             # root port ... device
    if not chain or not all(_BDF.match(p) for p in chain):
        return None
    # the device is chain[-1]; its NCCL parent is two components up, and so on
    switches = tuple(chain[i] for i in range(len(chain) - 3, -1, -2))
    text = _text(link / "numa_node")
    numa = read_int(text)
    numa = -1 if numa is None else numa
    return PciPlace(bdf=bdf, host_bridge=parts[roots[-1]], switches=switches,
                    numa_node=numa)


class Port(namedtuple("Port", "number state link_layer rate_gbps")):
    __slots__ = ()
    number: int
    state: str                    # "ACTIVE", "DOWN", "INIT", ... ("" if unreadable)
    link_layer: str               # "InfiniBand" | "Ethernet" | ""
    rate_gbps: Optional[float]    # None: unknown (unreadable, or not "<n> Gb/sec")

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"


class RdmaNic(namedtuple("RdmaNic", "name bdf ports netdevs place verbs via",
                         defaults=("", ""))):
    """One RDMA device (``mlx5_0``), its ports, its netdevs and its PCI place."""
    __slots__ = ()
    name: str
    bdf: str
    ports: Tuple[Port, ...]
    netdevs: Tuple[str, ...]
    place: Optional[PciPlace]
    verbs: str                    # "uverbs0": its verbs device; "" if sysfs has none
    via: str                      # a software device's netdev ("eth1"); "" for a PCI one


def _port(port_dir: Path) -> Optional[Port]:
    if not port_dir.name.isdecimal():
        return None
    state = _text(port_dir / "state")            # "4: ACTIVE"
    # the kernel's rate_show fails with EINVAL when the port's speed or width is
    # unknown; that (or anything not "<n> Gb/sec", or 0) is an unknown rate
    rate = _RATE.match(_text(port_dir / "rate"))
    gbps = float(rate.group(1)) if rate else None
    return Port(number=int(port_dir.name), state=state.partition(":")[2].strip() or state,
                link_layer=_text(port_dir / "link_layer"), rate_gbps=gbps or None)


_NETDEV = re.compile(r"^[^/\s]{1,15}$")      # IFNAMSIZ - 1, no slash or space


#: Buses of a device below a PCI function that is still that function's: virtio-net's
#: ``virtioN``, an auxiliary device (``mlx5_core.sf.N``). Not usb: a USB NIC's nearest
#: BDF is its USB controller (NCCL's ``ncclTopoFillNet`` attaches a net whose path is
#: not a PCI device, "virtual, usb, ...", to the first CPU, not to a PCI node).
_BELOW_FUNCTION = ("pci", "virtio", "auxiliary")


def _function(path: Path) -> str:
    """The PCI function a sysfs device path resolves into (the nearest BDF component:
    a virtio-net netdev's ``device`` is ``.../<bdf>/virtio3``), or "" (none, or the
    device below it is on another bus, by its ``subsystem`` link)."""
    try:
        real = os.path.realpath(path)
        parts = real.split(os.sep)
        bdf = next((p for p in reversed(parts) if _BDF.match(p)), "")
        bus = os.path.realpath(os.path.join(real, "subsystem"))
    except (OSError, ValueError):
        return ""
    below = parts[-1] != bdf and os.path.lexists(os.path.join(real, "subsystem"))
    return "" if below and os.path.basename(bus) not in _BELOW_FUNCTION else bdf


def _soft_function(sys_root: Path, dev: Path, ports: Tuple[str, ...]) -> Tuple[str, str]:
    """A software RDMA device's PCI function and netdev, by its first port whose GID 0
    has a netdev with a PCI function behind it; ("", "") if none has."""
    for port in ports:
        name = _text(dev / "ports" / port / "gid_attrs/ndevs/0")
        if _NETDEV.match(name) and name not in (".", ".."):
            bdf = _function(sys_root / "class/net" / name / "device")
            if bdf:
                return bdf, name
    return "", ""


def _verbs_by_device(sys_root: Path) -> Dict[str, str]:
    """``class/infiniband_verbs/uverbs<N>/ibdev``: device name -> its verbs device."""
    base = sys_root / "class/infiniband_verbs"
    out: Dict[str, str] = {}
    for verbs in listdir(base):
        name = _text(base / verbs / "ibdev")
        if verbs.startswith("uverbs") and name:
            out.setdefault(name, verbs)
    return out


def _placed(sys_root: Path, dev: Path, port_names: Tuple[str, ...]) -> Tuple[str, str]:
    """The PCI function of RDMA device ``dev`` and, for a software one, the netdev it
    was found through; ("", "") if neither its ``device`` link nor a netdev leads to one."""
    bdf = _function(dev / "device")
    return (bdf, "") if bdf else _soft_function(sys_root, dev, port_names)


def unplaced(sys_root: Path) -> Tuple[str, ...]:
    """The RDMA devices listed in ``class/infiniband`` that :func:`read_nics` cannot
    place at any PCI function (software RoCE over a bond, a VLAN or a USB NIC): named
    where ray-numa says why no NIC was chosen, so "none" is not read as "no devices"."""
    base = sys_root / "class/infiniband"
    return tuple(name for name in listdir(base)
                 if not _placed(sys_root, base / name, listdir(base / name / "ports"))[0])


def nic_order(nic: "RdmaNic") -> Tuple[int, bool, str]:
    """PCI order (:func:`bdf_order`); on one function, a PCI device before a software one."""
    return bdf_order(nic.bdf), bool(nic.via), nic.name


def read_nics(sys_root: Path,
              keep: Callable[["RdmaNic"], bool] = lambda nic: True) -> Tuple[RdmaNic, ...]:
    """Every RDMA physical function under ``sys_root/class/infiniband``, in PCI order
    (:func:`bdf_order`), as NCCL numbers them.

    SR-IOV virtual functions are left out where their physical function's RDMA device
    is listed: NCCL merges a VF into its physical function (``ncclIbGetPciPath`` with
    ``NCCL_IB_MERGE_VFS=1``, the default, zeroes the device and function of its PCI
    path), so a VF is not another NIC to spread GPUs over, nor another NIC for UCX's
    "all" to use. Where the PF's device is not listed (a pod given one VF, with the
    RDMA subsystem in ``netns exclusive`` mode: ``class/infiniband`` shows only the
    devices of the pod's network namespace), the VF is the NIC, and NCCL uses it.
    ``keep`` (the devices this process can open) is asked first: a pod in the default
    ``shared`` mode sees every device but may open only its VF's verbs device, and
    then the VF is the NIC, not a duplicate of a PF it cannot use.

    A software RoCE device is placed at its netdev's PCI function (module doc), and
    left out where a PCI RDMA device sits on that function: it is the same NIC, which
    the hardware device drives. So is a device on an auxiliary device below the
    function (an mlx5 scalable function, ``<bdf>/mlx5_core.sf.N``), which shares the
    function's port as a VF does. NCCL places neither at a PCI function: it follows
    only the ``device`` link, and a net whose path is none (``ncclIbGetPciPath``: no
    real path) or not a PCI device (an auxiliary one) is attached to the first CPU node
    (``ncclTopoFillNet``, src/graph/xml.cc), so there NCCL's own choice may differ.
    """
    base = sys_root / "class/infiniband"
    nics = []
    verbs_of = None
    vf_of: Dict[str, str] = {}        # a VF's device name -> its physical function
    beside: Dict[str, str] = {}       # a software or auxiliary device -> its function
    for name in listdir(base):
        dev = base / name
        port_names = listdir(dev / "ports")
        bdf, via = _placed(sys_root, dev, port_names)
        if not bdf:
            continue          # no PCI function behind it, nor behind its netdev
        if via or not os.path.realpath(dev / "device").endswith(os.sep + bdf):
            beside[name] = bdf
        physfn = sys_root / "bus/pci/devices" / bdf / "physfn"
        if os.path.lexists(physfn):       # an SR-IOV VF: part of its physical function
            vf_of[name] = _function(physfn) or "?"
        ports = tuple(p for p in (_port(dev / "ports" / n) for n in port_names)
                      if p is not None)
        verbs = [v for v in listdir(dev / "device/infiniband_verbs") if v.startswith("uverbs")]
        if not verbs or via:
            verbs_of = _verbs_by_device(sys_root) if verbs_of is None else verbs_of
            verbs = [verbs_of[name]] if name in verbs_of else []
        nics.append(RdmaNic(name=name, bdf=bdf, ports=ports,
                            netdevs=(via,) if via else listdir(dev / "device/net"),
                            place=pci_place(sys_root, bdf), verbs=verbs[0] if verbs else "",
                            via=via))
    nics = [n for n in nics if keep(n)]
    own = {n.bdf for n in nics if n.name not in beside}      # the function's own device
    physical = own - {n.bdf for n in nics if n.name in vf_of}
    nics = [n for n in nics if beside.get(n.name, "?") not in own
            and vf_of.get(n.name, "?") not in physical]
    return tuple(sorted(nics, key=nic_order))
