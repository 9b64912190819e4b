"""Which of a process's mappings hold its *own* memory: the pages a bind may move.

``migrate_pages(2)`` moves every page of the process on the old nodes, and with
``CAP_SYS_NICE`` (root, or the capability recommended for containers) that includes
pages it shares with other processes: Ray's object store (every worker maps it),
``/dev/shm`` segments, shared file mappings. A worker binding to node 1 would pull
them all off node 0, under the feet of the processes on node 0.

The pages that belong to this process live in its *private* mappings:
``/proc/<pid>/maps`` (proc(5)) shows permissions ending in ``p`` (``s`` is shared).
They are anonymous ones (no file, inode 0, or the kernel's names ``[heap]``,
``[stack]``, ``[stack:<tid>]`` before Linux 4.5, ``[anon:<name>]`` from
``prctl(PR_SET_VMA_ANON_NAME)``, Linux 5.17+) and private file mappings, whose
written pages (a library's relocated data, its GOT: ~3.5 MiB in a Ray worker) are
this process's copies, when the process can write them (perms ``w``) or has
already written them (``anon=`` pages in ``/proc/<pid>/numa_maps``): a read-only
private mapping (library code, model weights mapped with ``mmap``) holds page-cache
pages, which MPOL_MF_MOVE would copy whenever no other process maps them. A private
mapping of ``/dev/zero`` is anonymous memory (mm/mmap.c). Left out: shared mappings (Ray's object store, /dev/shm, and
``MAP_SHARED | MAP_ANONYMOUS``, which Python's ``mmap.mmap(-1, n)`` makes: memory for
the children a process forks); private mappings of files on tmpfs, ramfs, hugetlbfs or devtmpfs (any mount:
``/dev/shm``, ``/tmp``, ``/run``, Kubernetes' memory ``emptyDir``; decided by the
maps line's device looked up in ``/proc/<pid>/mountinfo``; a device number of 0 --
an anonymous device -- that mountinfo does not list is left out too), memfds and
deleted files, because ``mbind`` on them sets the *file's* shared
policy (mm/shmem.c ``shmem_set_policy``), which other processes allocate by; devices
(``/dev/...``); and the kernel's ``[vdso]``, ``[vvar]``, ``[vsyscall]``.

Even inside these mappings, pages the process shares with a forked child
(copy-on-write) move only with ``MPOL_MF_MOVE_ALL``; ray-numa passes ``MPOL_MF_MOVE``,
which per mbind(2) moves only pages used by this process alone.
Mappings that carry a policy of their own (a user's ``mbind``, libnuma's
``numa_alloc_onnode``/``numa_alloc_interleaved``) are the caller's to skip: their
owner chose where the pages go.
Pure but for :func:`read_own_mappings`, which reads the three files once.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

#: The kernel's names for anonymous mappings (proc(5)); others name a file.
_ANON_NAMES = ("[heap]", "[stack]", "[stack:", "[anon:")

#: Private mappings of these are left alone: memfd files (a shared policy), devices.
_NOT_OWN_FILES = ("/dev/", "/memfd:", "/SYSV")

#: Filesystems whose files keep a shared policy (mm/shmem.c, hugetlbfs) or are RAM.
SHARED_POLICY_FS = frozenset({"tmpfs", "ramfs", "hugetlbfs", "devtmpfs"})

Range = Tuple[int, int]          # [start, end) addresses
Device = Tuple[int, int]         # (major, minor)


def device_fstypes(mountinfo_text: str) -> Dict[Device, str]:
    """Device number -> filesystem type from a ``/proc/<pid>/mountinfo`` text
    (proc(5): field 3 is ``major:minor``, the type follows the ``-`` separator)."""
    out: Dict[Device, str] = {}
    for line in mountinfo_text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            major, minor = (int(x) for x in fields[2].split(":"))
            out[(major, minor)] = fields[sep + 1]
        except (ValueError, IndexError):
            continue
    return out


def anon_starts(numa_maps_text: str) -> Set[int]:
    """Start addresses of the mappings with anonymous pages (``anon=N``) in a
    ``/proc/<pid>/numa_maps`` text (numa(7))."""
    out: Set[int] = set()
    for line in numa_maps_text.splitlines():
        fields = line.split()
        if any(f.startswith("anon=") for f in fields[2:]):
            try:
                out.add(int(fields[0], 16))
            except ValueError:
                continue
    return out


def _file_fs_ok(dev: str, fstypes: Dict[Device, str]) -> bool:
    try:
        major, minor = (int(x, 16) for x in dev.split(":"))
    except ValueError:
        return False
    fstype = fstypes.get((major, minor))
    if fstype is None:
        return major != 0        # a block device's filesystem; 0 is tmpfs's kind too
    return fstype not in SHARED_POLICY_FS


def _own(fields: List[str], start: int, fstypes: Dict[Device, str],
         anon: Set[int]) -> bool:
    perms, dev, inode = fields[1], fields[3], fields[4]
    if not perms.endswith("p"):
        return False
    name = fields[5].strip() if len(fields) > 5 else ""
    if not name:
        return inode == "0"
    if name.startswith("["):
        return name.startswith(_ANON_NAMES)
    if name == "/dev/zero":
        return True              # a private /dev/zero mapping is anonymous memory
    return (name.startswith("/") and not (name.startswith(_NOT_OWN_FILES)
                                          or name.endswith(" (deleted)"))
            and _file_fs_ok(dev, fstypes) and ("w" in perms or start in anon))


def own_mappings(maps_text: str, fstypes: Optional[Dict[Device, str]] = None,
                 anon: Iterable[int] = ()) -> List[Range]:
    """The address ranges of the process's own mappings in a ``/proc/<pid>/maps``
    text, one per mapping; ``fstypes`` from :func:`device_fstypes`, ``anon`` from
    :func:`anon_starts`. A line it cannot read is skipped, never guessed at."""
    fstypes = fstypes or {}
    anon = set(anon)
    out: List[Range] = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        try:
            start, end = (int(x, 16) for x in fields[0].split("-"))
        except ValueError:
            continue
        if _own(fields, start, fstypes, anon):
            out.append((start, end))
    return out


def merge(ranges: Iterable[Range]) -> List[Range]:
    """Adjacent ranges merged (one ``mbind`` call covers a thread's guard page and
    stack)."""
    out: List[Range] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def overlaps(ranges: Iterable[Range], within: List[Range]) -> List[Range]:
    """The parts of ``ranges`` that lie inside one of ``within``."""
    return [(max(s, ws), min(e, we)) for s, e in ranges for ws, we in within
            if max(s, ws) < min(e, we)]


def own_ranges(maps_text: str, fstypes: Optional[Dict[Device, str]] = None,
               anon: Iterable[int] = ()) -> List[Range]:
    """:func:`own_mappings`, adjacent ones merged."""
    return merge(own_mappings(maps_text, fstypes, anon))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_own_mappings(pid: str = "self",
                      keep: Callable[[int], bool] = lambda start: True) -> List[Range]:
    """:func:`own_mappings` of the process, only those whose start ``keep`` accepts
    (the caller's policy check); OSError if maps cannot be read. Without mountinfo or
    numa_maps a file mapping on an anonymous device or a read-only one is left out."""
    maps = _read(f"/proc/{pid}/maps")
    try:
        fstypes = device_fstypes(_read(f"/proc/{pid}/mountinfo"))
    except OSError:
        fstypes = {}
    try:
        anon = anon_starts(_read(f"/proc/{pid}/numa_maps"))
    except OSError:
        anon = set()
    return [r for r in own_mappings(maps, fstypes, anon) if keep(r[0])]
