"""hwloc as the oracle: on every real machine of hwloc's own corpus, ray-numa reads
and decides what hwloc's ``lstopo`` says, except where a table below names why not.

Each dump (``tests/fixtures/hwloc``, from open-mpi/hwloc ``tests/hwloc/linux``) is
read twice: by Debian's hwloc (``HWLOC_FSROOT=<dump> lstopo --of xml``, run as hwloc's
own ``tests/hwloc/linux/test-topology.sh`` runs it: ``HWLOC_COMPONENTS=linux,stop``,
so only the dump's /sys and /proc count, not this host's cpuid) and by ray-numa
(``read_topology(<dump>/sys)``). Compared, for every dump:

* node CPUs: the online CPUs, the set of node ids, and each NUMA node's CPUs: a node
  whose dump's own ``nodeN/cpulist`` lists none must read CPU-less (hwloc's cpuset
  for it is its locality, which issue 20 item 4 decides), every other node exactly
  hwloc's online CPUs of it;
* PCI locality: the CPUs of the node ray-numa reads for each PCI device
  (``numa_node``) against the CPUs of the object hwloc attaches it under
  (``local_cpus``); a device both call unknown agrees;
* sockets: the CPUs ``cpus: "socket"`` binds for each node against the union of
  hwloc's Packages that hold the node's CPUs;
* cores: ``Topology.siblings`` (what ``cpus: "exclusive"`` splits) against hwloc's
  Core of each CPU;
* L3 groups: ``Topology.llc`` (what ``cpus: "core-complex"`` splits) against the
  highest-level CPU cache hwloc puts above each CPU (both "unknown" agrees);
* allowed: every plan ray-numa makes stays inside what hwloc calls online (root
  ``cpuset``) and allowed (``allowed_cpuset``, ``allowed_nodeset``). No dump has
  the ``/proc/self/status`` ray-numa reads its limits from, so ray-numa is handed
  hwloc's own allowed sets: this proves plans stay inside limits they are given,
  not that ray-numa reads the limits right (tests/test_sysfs_robust.py and the
  real-cluster tests, which assert on /proc/self/status, check that reading).

Needs ``lstopo`` (``.ci/run`` installs Debian's ``hwloc``); skips, saying so, without.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import (Callable, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional,
                    Tuple, Union)

import pytest

from ray_numa.planning import plan_for
from ray_numa.cpusets import format_cpulist
from ray_numa.gpus import pci_numa_node
from ray_numa.options import parse
from ray_numa.policy import Plan
from ray_numa.topology import Topology, allowed_from, read_topology
from tests.fixtures import hwloc_corpus

LSTOPO = shutil.which("lstopo-no-graphics") or shutil.which("lstopo")
pytestmark = pytest.mark.skipif(
    LSTOPO is None, reason="hwloc's lstopo is not installed (.ci/run installs Debian's hwloc)")

#: As hwloc's tests/hwloc/linux/test-topology.sh: the Linux backend alone (no x86 cpuid
#: of this host mixed in), every NUMA node the kernel lists kept (hwloc hides NVIDIA
#: GPU memory nodes by default; ray-numa sees them, issue 20 item 4 decides them).
HWLOC_ENV = {"HWLOC_COMPONENTS": "linux,stop", "HWLOC_KEEP_NVIDIA_GPU_NUMA_NODES": "1",
             "HWLOC_DUMPED_HWDATA_DIR": "/var/run/hwloc"}

FACTS = ("node CPUs", "PCI locality", "sockets", "cores", "L3 groups", "allowed",
         "RDMA devices")

#: One disagreement: what (``node 3``, ``cpu 5``, a PCI bus id), and each side's CPUs
#: as a kernel list (``none``, ``unknown``).
Diff = namedtuple("Diff", "item ours hwloc")
Hwloc = namedtuple("Hwloc", "complete online allowed_cpus nodes allowed_nodes node_cpus packages "
                   "cores caches pci rdma")
Dump = namedtuple("Dump", "name root hwloc")


#: What a DIFFERENCES entry excuses: exactly these items, each with both sides as
#: the check prints them, ``{item: (ours, hwloc)}``; or, where the items are many and
#: follow one rule, a predicate on each :class:`Diff`. Anything else still fails.
Expected = Union[Mapping[str, Tuple[str, str]], Callable[["Diff"], bool]]


def _each(items: Iterable[str], ours: str, hwloc: str) -> Dict[str, Tuple[str, str]]:
    return {item: (ours, hwloc) for item in items}


def _compute_unit(d: "Diff") -> bool:
    """64amd64-4s2n4ca2co: ray-numa's core of cpu c is c's thread_siblings pair
    (2k, 2k+1), hwloc's is c alone."""
    c = int(d.item.split()[1])
    return d.ours == f"{c & ~1}-{c | 1}" and d.hwloc == str(c)


def _conflicting_l3(d: "Diff") -> bool:
    """40intel64-4n10c+pci-conflicts: the 3rd L3's CPUs, which hwloc leaves each alone."""
    return d.ours == "2,6,10,14,18,22,26,30,34,38" and d.hwloc == d.item.split()[1]


UNKNOWN = "node None (unknown)"

#: Where ray-numa and hwloc differ on purpose (or the dump is not a machine), by
#: (dump, fact): (what differs, why). A difference not listed fails, and so does a
#: listed item (or a predicate's whole entry) that no longer differs: a stale entry.
DIFFERENCES: Dict[Tuple[str, str], Tuple[Expected, str]] = {
    ("8em64t-2s2ca2c-buggynuma", "node CPUs"): ({"nodes": ("0-7", "0")},
        "firmware lists every CPU in every node (hwloc: 'Linux reports 8 NUMA nodes "
        "containing the (same) entire list of all cores'); hwloc keeps node 0 and drops "
        "the overlapping ones, ray-numa keeps the 8 nodes the kernel has, each of which "
        "binds all 8 CPUs: nothing wrong is bound, nothing is gained"),
    ("fakeheterocpunuma", "node CPUs"): ({"nodes": ("0-5", "0-3")},
        "hand-edited: node CPU lists overlap (4: 16-23, 5: 12-23), which Linux cannot "
        "produce; hwloc drops overlapping nodes unless HWLOC_DEBUG_ALLOW_OVERLAPPING_"
        "NODE_CPUSETS (its own test sets it), ray-numa reads each node's list"),
    ("fakeheterocpunuma", "sockets"): (_each(("node 0", "node 1"), "0-3,8-11", "0-11"),
        "hand-edited (see node CPUs): CPUs 4-7 are in no node, so no node's socket binds them"),
    ("40intel64-2g2n4c+pcilocality", "PCI locality"): (
        {"0000:43:00.0": ("node 2 (2,6,10,14,18,22,26,30,34,38)", "0-39")},
        "0000:43:00.0 says numa_node 2, its host bridge's local_cpus say every CPU: hwloc "
        "places a PCI tree by its host bridge (its own test forces the locality with "
        "HWLOC_PCI_LOCALITY), ray-numa by the device's own numa_node, as NVML does"),
    ("40intel64-4n10c+pci-conflicts", "sockets"): (
        {"node 3": ("3,7,11,15,19,23,27,31,35,39", "0-39")},
        "hand-edited conflict: the 4th socket's core_siblings overlap the others, so hwloc "
        "drops that package (node 3's CPUs are in none); ray-numa uses physical_package_id"),
    ("64amd64-4s2n4ca2co", "cores"): (_compute_unit,
        "AMD Bulldozer: thread_siblings pairs the two integer cores of a compute unit; "
        "hwloc makes each its own Core (their core_ids differ), ray-numa keeps the "
        "kernel's pairs, so cpus 'exclusive' gives a GPU whole compute units (which share "
        "the front end, FPU and L2)"),
    ("40intel64-4n10c+pci-conflicts", "L3 groups"): (_conflicting_l3,
        "hand-edited conflict: the 3rd L3's shared_cpu_map overlaps a package, hwloc "
        "ignores that cache; ray-numa reads the kernel's shared_cpu_list"),
}


def unexplained_and_stale(name: str, fact: str, found: List[Diff]) -> Tuple[List[Diff], List[str]]:
    """The differences DIFFERENCES does not excuse, and what it lists that no longer differs."""
    expected, _why = DIFFERENCES.get((name, fact), ({}, ""))
    if callable(expected):
        return [d for d in found if not expected(d)], ([] if found else ["every item"])
    unexplained = [d for d in found if expected.get(d.item) != (d.ours, d.hwloc)]
    return unexplained, sorted(set(expected) - {d.item for d in found})


def bitmap(text: Optional[str], limit: int = 1 << 16) -> FrozenSet[int]:
    """hwloc's XML bitmap: 32-bit ``0x`` words, most significant first; a leading
    ``0xf...f`` means every higher bit is set (cut at ``limit``)."""
    if not text:
        return frozenset()
    words = text.split(",")
    infinite = words[0] == "0xf...f"
    words = words[1:] if infinite else words
    bits = int("".join(w[2:].rjust(8, "0") for w in words) or "0", 16)
    out = {i for i in range(bits.bit_length()) if bits >> i & 1}
    if infinite:
        out.update(range(32 * len(words), limit))
    return frozenset(out)


CPU_CACHES = ("L1Cache", "L2Cache", "L3Cache", "L4Cache", "L5Cache")   # Data/Unified


def openfabrics(osdev_type: str, version: str) -> bool:
    """An OpenFabrics OS device: ``osdev_type`` 3 in hwloc 2.x's XML; in 3.x's
    (``<topology version="3.0">``) a bitmask, OpenFabrics ``1<<5`` (hwloc.h), with
    network (48 for an RDMA device), and 3 is storage|memory (a DAX device)."""
    if not osdev_type.isdigit():
        return False
    return bool(int(osdev_type) & 1 << 5) if version.startswith("3") else osdev_type == "3"


def parse_hwloc(xml: str) -> Hwloc:
    top = ET.fromstring(xml)
    root, version = top.find("object"), top.get("version") or ""
    node_cpus: Dict[int, FrozenSet[int]] = {}
    packages: List[FrozenSet[int]] = []
    cores: Dict[int, FrozenSet[int]] = {}
    caches: Dict[int, FrozenSet[int]] = {}
    pci: Dict[str, FrozenSet[int]] = {}
    rdma: Dict[str, str] = {}

    def walk(obj: ET.Element, placed: FrozenSet[int], cache: Tuple[int, FrozenSet[int]],
             busid: str = "") -> None:
        kind, cpus = obj.get("type"), bitmap(obj.get("cpuset"))
        if obj.get("cpuset") is not None:
            placed = cpus
        if kind == "NUMANode":
            node_cpus[int(obj.get("os_index"))] = cpus
        elif kind == "Package":
            packages.append(cpus)
        elif kind == "Core":
            cores.update((c, cpus) for c in cpus)
        elif kind in CPU_CACHES and obj.get("cache_type") != "2":
            if int(obj.get("depth")) > cache[0]:
                cache = (int(obj.get("depth")), cpus)
        elif kind == "PU" and cache[0] > 0:
            caches[int(obj.get("os_index"))] = cache[1]
        elif kind == "PCIDev":
            pci[obj.get("pci_busid")] = placed
            busid = obj.get("pci_busid")
        elif kind == "OSDev" and openfabrics(obj.get("osdev_type") or "", version):
            rdma[obj.get("name")] = busid          # "" where not below a PCI device
        for child in obj.findall("object"):
            walk(child, placed, cache, busid if kind in ("PCIDev", "OSDev") else "")

    walk(root, bitmap(root.get("cpuset")), (0, frozenset()))
    return Hwloc(complete=bitmap(root.get("complete_cpuset")), online=bitmap(root.get("cpuset")), allowed_cpus=bitmap(root.get("allowed_cpuset")),
                 nodes=bitmap(root.get("complete_nodeset")),
                 allowed_nodes=bitmap(root.get("allowed_nodeset")), node_cpus=node_cpus,
                 packages=packages, cores=cores, caches=caches, pci=pci, rdma=rdma)


def lstopo(fsroot: Path) -> Hwloc:
    env = dict(os.environ, HWLOC_FSROOT=str(fsroot), **HWLOC_ENV)
    out = subprocess.run([LSTOPO, "--of", "xml", "--whole-io", "--disallowed", "-"],
                         env=env, capture_output=True, text=True, check=True, timeout=60)
    return parse_hwloc(out.stdout)


@pytest.fixture(scope="session")
def corpus(request, tmp_path_factory) -> Iterator[Dict[str, Dump]]:
    """Every dump unpacked once and read by lstopo once (in parallel: ~0.1-1 s each)."""
    for roots in hwloc_corpus.for_session(request, tmp_path_factory):
        with ThreadPoolExecutor(max_workers=8) as pool:
            views = dict(zip(roots, pool.map(lstopo, roots.values())))
        yield {n: Dump(n, roots[n], views[n]) for n in roots}


_ours: Dict[str, Tuple[Topology, object]] = {}


def ours(dump: Dump) -> Tuple[Topology, object]:
    """ray-numa's topology of the dump, and the Allowed a process in the dump's
    cgroup has: the dumps carry no /proc/self/status (what ray-numa reads), so the
    limits are the ones the kernel shows there for that cgroup, which hwloc reads from
    the cgroup filesystem (``allowed_cpuset``/``allowed_nodeset``)."""
    if dump.name not in _ours:
        topo = read_topology(dump.root / "sys")
        limits = (format_cpulist(dump.hwloc.allowed_cpus & dump.hwloc.online),
                  format_cpulist(dump.hwloc.allowed_nodes & dump.hwloc.nodes), None)
        _ours[dump.name] = topo, allowed_from(limits, topo)
    return _ours[dump.name]


def _show(cpus: Optional[FrozenSet[int]]) -> str:
    return "unknown" if cpus is None else format_cpulist(cpus) or "none"


def _diff(item: str, mine: Optional[FrozenSet[int]], theirs: Optional[FrozenSet[int]]) -> Diff:
    return Diff(item, _show(mine), _show(theirs))


def cpuless_in_dump(root: Path, node: int) -> Optional[bool]:
    """Whether the dump's own ``nodeN/cpulist`` (else ``cpumap``) lists no CPU, read
    here without ray-numa's readers, so a reader that loses a node's CPUs cannot also
    excuse itself; None where the dump has neither file. Text ends at the first NUL
    and the map's hex digits are all zero for an empty node (drivers/base/node.c)."""
    base = root / f"sys/devices/system/node/node{node}"
    for name, empty in (("cpulist", lambda t: t == ""),
                        ("cpumap", lambda t: set(t) <= set("0,"))):
        try:
            text = (base / name).read_bytes().split(b"\0", 1)[0].decode().strip()
        except (OSError, UnicodeDecodeError):
            continue
        return empty(text)
    return None


def node_cpus(dump: Dump) -> List[Diff]:
    """The online CPUs, the node ids, and each node's CPUs: a node whose dump lists no
    CPU must read CPU-less (hwloc's cpuset for it is its locality, issue 20 item 4),
    every other node must read exactly hwloc's online CPUs of it."""
    topo, _ = ours(dump)
    hw = dump.hwloc
    out = []
    if topo.online != hw.online:
        out.append(_diff("online", topo.online, hw.online))
    if set(topo.nodes) != set(hw.node_cpus):
        out.append(_diff("nodes", frozenset(topo.nodes), frozenset(hw.node_cpus)))
    for n in sorted(set(topo.nodes) & set(hw.node_cpus)):
        mine = topo.nodes[n].cpus
        theirs = frozenset() if cpuless_in_dump(dump.root, n) else hw.node_cpus[n] & hw.online
        if mine != theirs:
            out.append(_diff(f"node {n}", mine, theirs))
    return out


def pci_locality(dump: Dump) -> List[Diff]:
    """The node of each PCI device: hwloc's place for it (its ``local_cpus``) is our
    node's CPUs, or inside them (ray-numa binds whole nodes; hwloc may place a device
    under a part of one); both say "nowhere" alike (ours None, hwloc the machine)."""
    topo, _ = ours(dump)
    hw = dump.hwloc
    out = []
    for bus_id, where in sorted(hw.pci.items()):
        node = pci_numa_node(bus_id, dump.root / "sys", topo.nodes)
        mine = topo.nodes[node].cpus if node in topo.nodes else None
        theirs = where & hw.online
        if not (mine == theirs or (mine is None and theirs == hw.online)
                or (mine is not None and theirs and theirs < mine)):
            out.append(Diff(bus_id, f"node {node} ({_show(mine)})", _show(theirs)))
    return out


def rdma_devices(dump: Dump) -> List[Diff]:
    """Each RDMA device's PCI function: hwloc's OpenFabrics OS device under its PCI
    device (``hwloc_linuxfs_lookup_infiniband_class``, by the ``device`` link) and
    ray-numa's :func:`~ray_numa.nics.read_nics`; a device hwloc puts under no PCI
    device (Xeon Phi's ``scif0``) is one ray-numa does not place either."""
    from ray_numa.nics import read_nics
    mine = {n.name: n.bdf for n in read_nics(dump.root / "sys")}
    return [Diff(name, mine.get(name) or "not placed", dump.hwloc.rdma.get(name) or
                 "not placed")
            for name in sorted(set(mine) | set(dump.hwloc.rdma))
            if (mine.get(name) or "") != (dump.hwloc.rdma.get(name) or "")]


def _plan(topo: Topology, allowed: object, value: dict) -> object:
    return plan_for(parse(value), (), topo, allowed)


def sockets(dump: Dump) -> List[Diff]:
    topo, allowed = ours(dump)
    hw = dump.hwloc
    out = []
    for n, node in sorted(topo.nodes.items()):
        if not node.cpus or len(topo.nodes) == 1:
            continue
        plan = _plan(topo, allowed, {"node": n, "cpus": "socket"})
        mine = plan.cpus if isinstance(plan, Plan) else frozenset()
        theirs = frozenset().union(*(p for p in hw.packages if p & node.cpus)) or hw.online
        if mine != theirs & allowed.cpus:
            out.append(_diff(f"node {n}", mine, theirs & allowed.cpus))
    return out


def per_cpu(dump: Dump, mine: Callable[[Topology, int], FrozenSet[int]],
            theirs: Callable[[Hwloc, int], FrozenSet[int]]) -> List[Diff]:
    """Each online CPU's group (core, L3) as ray-numa and hwloc see it, online CPUs only."""
    topo, _ = ours(dump)
    hw = dump.hwloc
    out = []
    for c in sorted(topo.online):
        a, b = mine(topo, c) & topo.online, theirs(hw, c) & hw.online
        if a != b:
            out.append(_diff(f"cpu {c}", a, b))
    return out


def cores(dump: Dump) -> List[Diff]:
    return per_cpu(dump, Topology.siblings, lambda hw, c: hw.cores.get(c, frozenset([c])))


def l3_groups(dump: Dump) -> List[Diff]:
    return per_cpu(dump, Topology.llc, lambda hw, c: hw.caches.get(c, frozenset()))


def allowed(dump: Dump) -> List[Diff]:
    topo, allowed_ = ours(dump)
    hw = dump.hwloc
    cpus_ok, mems_ok = hw.online & hw.allowed_cpus, hw.nodes & hw.allowed_nodes
    out = []
    for n in sorted(topo.nodes):
        for mode in ("node", "socket", "exclusive"):
            plan = _plan(topo, allowed_, {"node": n, "cpus": mode, "memory": "bind"})
            if isinstance(plan, Plan) and not (plan.cpus <= cpus_ok
                                               and set(plan.mem_nodes) <= mems_ok):
                out.append(Diff(f"node {n} {mode}", f"CPUs {_show(plan.cpus)}, nodes "
                                f"{_show(frozenset(plan.mem_nodes))}", f"CPUs "
                                f"{_show(cpus_ok)}, nodes {_show(mems_ok)} online and allowed"))
    return out


CHECKS = dict(zip(FACTS, (node_cpus, pci_locality, sockets, cores, l3_groups, allowed,
                          rdma_devices)))


@pytest.mark.parametrize("fact", FACTS)
def test_ray_numa_agrees_with_hwloc(corpus, fact):
    """One fact over the whole corpus; every disagreement not in DIFFERENCES fails,
    and so does an entry (or an item of one) there that no longer differs."""
    check = CHECKS[fact]
    unexplained, stale = [], []
    for name, dump in corpus.items():
        bad, gone = unexplained_and_stale(name, fact, check(dump))
        if bad:
            unexplained.append(f"{name}: " + "; ".join(
                f"{d.item}: ours {d.ours}, hwloc {d.hwloc}" for d in bad[:4])
                + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else ""))
        if gone:
            stale.append(f"{name} ({', '.join(gone)})")
    assert not unexplained, f"{fact}: ray-numa and hwloc differ on:\n" + "\n".join(unexplained)
    assert not stale, f"{fact}: DIFFERENCES names {stale}, which now agree: drop them"


def test_rdma_devices_are_read_from_hwloc_2_and_3_xml():
    """hwloc 3.x exports ``osdev_type`` as its bitmask (topology-xml.c: v2 export
    writes 3 for OpenFabrics, v3 the types as they are): there 48 is an RDMA device
    and 3 a DAX device. Before, a 3.x lstopo's RDMA devices went unseen (and a DAX
    device was taken for one), failing the RDMA fact on every dump with a NIC."""
    def xml(version, types):
        devs = "".join(f'<object type="OSDev" name="{n}" osdev_type="{t}"/>'
                       for n, t in types)
        return (f'<topology version="{version}"><object type="Machine" cpuset="0x1">'
                f'<object type="PCIDev" pci_busid="0000:82:00.0">{devs}</object>'
                '</object></topology>')
    assert parse_hwloc(xml("2.0", [("mlx4_0", "3"), ("dax0.0", "0")])).rdma == {
        "mlx4_0": "0000:82:00.0"}
    assert parse_hwloc(xml("3.0", [("mlx4_0", "48"), ("dax0.0", "3")])).rdma == {
        "mlx4_0": "0000:82:00.0"}


def test_the_oracle_sees_the_corpus(corpus):
    """The comparison has something to compare: every dump read by both, and the
    corpus covers what issue 20 asks for."""
    assert len(corpus) >= 20
    assert sum(bool(d.hwloc.pci) for d in corpus.values()) >= 5           # PCI devices
    assert sum(len(d.hwloc.packages) > 1 for d in corpus.values()) >= 10  # multi-socket
    assert any(d.hwloc.allowed_cpus & d.hwloc.online != d.hwloc.online
               for d in corpus.values())                                 # cgroup limits
    assert any(d.hwloc.complete != d.hwloc.online for d in corpus.values())  # offline CPUs
    rdma = {n: d.hwloc.rdma for n, d in corpus.items() if d.hwloc.rdma}       # RDMA devices
    assert sum(bool(busid) for r in rdma.values() for busid in r.values()) >= 3, rdma
    # Xeon Phi's scif0 (class/infiniband, no PCI device behind it): neither places it
    from ray_numa.nics import unplaced
    mic = corpus["32em64t-2n8c+dax+nvme+mic+dimms"]
    assert unplaced(mic.root / "sys") == ("scif0",) and not mic.hwloc.rdma.get("scif0")
