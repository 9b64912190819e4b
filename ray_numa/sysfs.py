"""Reading what the kernel wrote in sysfs and /proc, the way hwloc does.

hwloc's ``hwloc/topology-linux.c`` reads a messy real ``/sys`` defensively: any file
may be missing, empty, NUL-terminated (``"0-7\\n\\0"`` on some 5.x kernels),
hex-only (old kernels have ``cpumap`` but no ``cpulist``) or garbage. These readers
never raise: a file that does not hold what it should gives None, and the caller
falls back and records why (``problems``). Stdlib only, no ray_numa imports: both
:mod:`ray_numa.cpusets` (a worker's limits) and :mod:`ray_numa.topology` use them.
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import FrozenSet, Iterable, List, Mapping, Optional, Tuple

#: Above any CPU or node id a kernel has (NR_CPUS is at most 8192, x86's MAXSMP): a
#: larger one in a sysfs file is garbage, and a range up to it would fill memory.
MAX_ID = 1 << 16


#: Bytes :func:`read_sysfs` reads of a file at most (16 pages).
MAX_READ = 64 << 10


def read_sysfs(path: Path) -> Optional[str]:
    """A sysfs or /proc file's text, None if it cannot be read.

    As hwloc's ``hwloc_read_path_*`` do (hwloc/topology-linux.c), anything the file
    holds is text: bytes that are not UTF-8 are replaced rather than raising, and
    the text ends at the first NUL, as hwloc's C-string read does (some kernels leave
    NULs after the newline, ``"0-7\\n\\0"``; ``"1\\0" "2"`` is 1, not 12).

    The file is read to its end, as hwloc's ``hwloc__read_fd`` does: one ``read`` of a
    kernfs file returns at most a page (``kernfs_file_read_iter`` in fs/kernfs/file.c),
    and since Linux 5.15 ``node*/cpulist`` and the ``topology/*_list`` files are binary
    attributes that may be longer (a node of 1000 CPUs numbered 0,2,4,... is a 5 KB
    list); a multi-record /proc file (``/proc/self/maps``) comes a page at a time too.
    But at most :data:`MAX_READ` bytes: a file in a fixture tree that is a link to
    ``/dev/zero`` or a FIFO must neither exhaust memory nor block (``O_NONBLOCK``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            data = _read_to_end(fd)
        finally:
            os.close(fd)
    except OSError:
        return None
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def _read_to_end(fd: int) -> bytes:
    """What ``fd`` holds up to :data:`MAX_READ` bytes, in as many reads as it takes
    (until end of file, or no more for now from a FIFO)."""
    chunks: List[bytes] = []
    left = MAX_READ
    while left:
        try:
            chunk = os.read(fd, left)
        except BlockingIOError:
            if not chunks:       # nothing to read at all: as unreadable as before
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def sysfs_list(text: Optional[str]) -> Optional[FrozenSet[int]]:
    """A kernel list (``0-3,8``) as a sysfs or /proc file holds it; None when the
    text is missing or not one (garbage, a range backwards or past :data:`MAX_ID`).

    hwloc's ``hwloc__read_path_as_cpulist`` reads the numbers it can and ignores
    the rest; here a file that is not a list is not trusted at all, so the caller
    can fall back (to the hex map, to the directory) and say why.
    """
    if text is None:
        return None
    out = set()
    for part in text.replace("\0", "").strip().split(","):
        lo, sep, hi = part.strip().partition("-")
        if not part.strip() and not sep:
            continue
        if not is_decimal(lo) or (sep and not is_decimal(hi)):
            return None
        first, last = int(lo), int(hi or lo)
        if last < first or last > MAX_ID:
            return None
        out.update(range(first, last + 1))
    return frozenset(out)


def sysfs_mask(text: Optional[str]) -> Optional[FrozenSet[int]]:
    """A kernel cpumask (``00000000,0000ffff``: 32-bit hex words, most significant
    first), the form of ``cpumap``, ``shared_cpu_map``, ``thread_siblings`` and PCI
    ``local_cpus``; None when missing or not one. hwloc reads these maps rather
    than the lists (``hwloc__read_path_as_cpumask``); old kernels have only them."""
    if text is None:
        return None
    words = text.replace("\0", "").strip().split(",")
    if words == [""]:
        return frozenset()
    if len(words) > MAX_ID // 32 or not all(
            0 < len(w) <= 8 and all(c in string.hexdigits for c in w) for w in words):
        return None
    bits = int("".join(w.rjust(8, "0") for w in words), 16)
    return frozenset(i for i in range(bits.bit_length()) if bits >> i & 1)


def is_decimal(text: str) -> bool:
    """Only ASCII digits (``str.isdigit`` also accepts "²", which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def read_int(text: Optional[str]) -> Optional[int]:
    """A number file (``level``, ``physical_package_id``: ``"3\\n"``, ``"-1"``); not one
    past 18 digits (no id is, and ``int`` refuses strings past 4300 digits)."""
    body = (text or "").strip()
    digits = body[1:] if body[:1] == "-" else body
    return int(body) if is_decimal(digits) and len(digits) <= 18 else None


def not_read(problems: List[str], path: Path, text: str, what: str) -> None:
    problems.append(f"{path}: not {what} ({text.strip()[:40]!r}); ignored")


def read_cpus(problems: List[str], directory: Path, *names: str,
              member: Optional[int] = None) -> Optional[FrozenSet[int]]:
    """The first of the files ``names`` in ``directory`` that holds a CPU set (with
    CPU ``member`` in it, if given: cpuN's siblings or cache leave out cpuN only when
    the file is wrong): a ``...list`` file in the list format, any other a hex map.
    None if none does.

    A list file with a hex twin (``cpulist``/``cpumap``, ``shared_cpu_list``/
    ``shared_cpu_map``, ``thread_siblings_list``/``thread_siblings``) falls back to
    it: older kernels have only the maps, which are what hwloc reads
    (``hwloc__read_path_as_cpumask`` in hwloc/topology-linux.c).
    """
    for name in names:
        path = directory / name
        text = read_sysfs(path)
        if text is None:
            continue
        as_list = name.endswith("list")
        found = sysfs_list(text) if as_list else sysfs_mask(text)
        if found is not None and (member is None or member in found or not found):
            return found
        not_read(problems, path, text, ("a CPU list" if as_list else "a CPU map")
                 + ("" if member is None else f" with cpu{member} in it"))
    return None


def listdir(directory: Path) -> Tuple[str, ...]:
    """The entries of ``directory``, sorted; () where it cannot be listed."""
    try:
        return tuple(sorted(os.listdir(directory)))
    except OSError:
        return ()


def numbered(directory: Path, prefix: str) -> List[int]:
    """N of each ``<prefix>N`` entry of ``directory``."""
    found = (n[len(prefix):] for n in listdir(directory) if n.startswith(prefix))
    return sorted(int(n) for n in found if is_decimal(n) and int(n) <= MAX_ID)


def driver_numa_node(text: Optional[str]) -> Optional[int]:
    """The GPU memory node the NVIDIA driver names in
    ``/proc/driver/nvidia/gpus/<bus>/numa_status`` ("Node: 255"), which is what NVML's
    ``nvmlDeviceGetNumaNodeId`` answers; None where it names none (no file, -1, garbage).
    Read as hwloc reads it (``topology-linux.c``, NVIDIA GPU NUMA nodes)."""
    words = (text or "").partition("Node:")[2].split()
    value = read_int(words[0]) if words else None
    return value if value is not None and value >= 0 else None


def nodes_within(local: Optional[FrozenSet[int]], node_cpus: Mapping[int, FrozenSet[int]],
                 among: Optional[Iterable[int]] = None) -> Tuple[int, ...]:
    """The nodes (of ``among``, default all) that a device's ``local_cpus`` holds at
    least half of: where the device sits. Empty where ``local`` says nothing: missing,
    empty, or every CPU of the machine (a bus the firmware did not place).

    Touching one CPU of a node is not enough: a ``local_cpus`` of 0-88 on a machine
    whose sockets are 0-87 and 88-175 is socket 0, not both. hwloc places a PCI
    device by ``local_cpus`` (``hwloc_linux_backend_get_pci_busid_cpuset``) under the
    smallest object holding it; ray-numa binds whole nodes, so the nodes it mostly covers.
    """
    every = frozenset().union(*node_cpus.values())
    if not local or not every or every <= local:
        return ()
    return tuple(sorted(n for n in (node_cpus if among is None else among)
                        if node_cpus.get(n) and 2 * len(node_cpus[n] & local) >= len(node_cpus[n])))
