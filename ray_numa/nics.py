"""RDMA network cards and where PCI devices sit, read from sysfs.

Pure readers over a ``/sys``-shaped root, like :mod:`ray_numa.topology`: every file
may be missing, empty or odd (hwloc's ``topology-linux.c`` reads the same tree the
same way), and a machine this cannot read yields fewer facts, never an exception.

Facts relied on (all world-readable):

- ``class/infiniband/<dev>/device``: a link to the RDMA device's PCI function
  (InfiniBand HCAs and RoCE NICs alike: the kernel's ib_core registers both);
- ``class/infiniband/<dev>/ports/<n>/state`` (``4: ACTIVE``), ``link_layer``
  (``InfiniBand`` | ``Ethernet``) and ``rate`` (``400 Gb/sec (4X NDR)``);
- ``class/infiniband/<dev>/device/net/*``: the netdev(s) of the function (RoCE);
- ``bus/pci/devices/<bdf>``: a link into ``devices/pciDDDD:BB/<root port>/.../<bdf>``,
  whose components are the PCI bridges between the device and its host bridge;
- ``bus/pci/devices/<bdf>/numa_node``: the device's NUMA node (-1: unknown).
"""
from __future__ import annotations

import os
import re
from collections import namedtuple
from pathlib import Path
from typing import Optional, Tuple

_BDF = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def _read(path: Path) -> str:
    try:
        return path.read_text().replace("\0", "").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _int(text: str, default: int) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return default


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
    numa = _int(_read(link / "numa_node"), -1)
    return PciPlace(bdf=bdf, host_bridge=parts[roots[-1]], switches=switches,
                    numa_node=numa)


class Port(namedtuple("Port", "number state link_layer rate_gbps")):
    __slots__ = ()
    number: int
    state: str          # "ACTIVE", "DOWN", "INIT", ... ("" if unreadable)
    link_layer: str     # "InfiniBand" | "Ethernet" | ""
    rate_gbps: float    # 0.0 if unreadable

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"


class RdmaNic(namedtuple("RdmaNic", "name bdf ports netdevs place")):
    """One RDMA device (``mlx5_0``), its ports, its netdevs and its PCI place."""
    __slots__ = ()
    name: str
    bdf: str
    ports: Tuple[Port, ...]
    netdevs: Tuple[str, ...]
    place: Optional[PciPlace]


def _port(port_dir: Path) -> Optional[Port]:
    if not port_dir.name.isdecimal():
        return None
    state = _read(port_dir / "state")            # "4: ACTIVE"
    rate = _read(port_dir / "rate").split()      # "400 Gb/sec (4X NDR)"
    try:
        gbps = float(rate[0]) if rate else 0.0
    except ValueError:
        gbps = 0.0
    return Port(number=int(port_dir.name), state=state.partition(":")[2].strip() or state,
                link_layer=_read(port_dir / "link_layer"), rate_gbps=gbps)


def _listdir(path: Path) -> Tuple[str, ...]:
    try:
        return tuple(sorted(os.listdir(path)))
    except OSError:
        return ()


def _natural(name: str) -> Tuple:
    """``mlx5_2`` before ``mlx5_10``: the order ``ibv_get_device_list`` gives on the
    usual udev naming, the order NCCL numbers its IB devices in."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def read_nics(sys_root: Path) -> Tuple[RdmaNic, ...]:
    """Every RDMA device under ``sys_root/class/infiniband``, in device-name order."""
    base = sys_root / "class/infiniband"
    nics = []
    for name in sorted(_listdir(base), key=_natural):
        dev = base / name
        try:
            bdf = os.path.basename(os.path.realpath(dev / "device"))
        except OSError:
            continue
        if not _BDF.match(bdf):
            continue          # no PCI function behind it (e.g. a parentless soft device)
        ports = tuple(p for p in (_port(dev / "ports" / n) for n in _listdir(dev / "ports"))
                      if p is not None)
        nics.append(RdmaNic(name=name, bdf=bdf, ports=ports,
                            netdevs=_listdir(dev / "device/net"),
                            place=pci_place(sys_root, bdf)))
    return tuple(nics)
