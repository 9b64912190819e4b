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
this process's copies. Left out: shared mappings (Ray's object store, /dev/shm, and
``MAP_SHARED | MAP_ANONYMOUS``, which Python's ``mmap.mmap(-1, n)`` makes: memory for
the children a process forks); private mappings of tmpfs files (``/dev/shm/...``,
``/memfd:...``, deleted files), because ``mbind`` on them sets the *file's* shared
policy (mm/shmem.c ``shmem_set_policy``), which other processes allocate by; devices
(``/dev/...``); and the kernel's ``[vdso]``, ``[vvar]``, ``[vsyscall]``.

Even inside these mappings, pages the process shares with a forked child
(copy-on-write) move only with ``MPOL_MF_MOVE_ALL``; ray-numa passes ``MPOL_MF_MOVE``,
which per mbind(2) moves only pages used by this process alone.
Pure: reading the file is the caller's one ``open``.
"""
from __future__ import annotations

from typing import List, Tuple

#: The kernel's names for anonymous mappings (proc(5)); others name a file.
_ANON_NAMES = ("[heap]", "[stack]", "[stack:", "[anon:")

#: Private mappings of these are left alone: tmpfs/memfd files (a shared policy), devices.
_NOT_OWN_FILES = ("/dev/", "/memfd:", "/SYSV")

Range = Tuple[int, int]          # [start, end) addresses


def _own(fields: List[str]) -> bool:
    perms, inode = fields[1], fields[4]
    if not perms.endswith("p"):
        return False
    name = fields[5].strip() if len(fields) > 5 else ""
    if not name:
        return inode == "0"
    if name.startswith("["):
        return name.startswith(_ANON_NAMES)
    return name.startswith("/") and not (name.startswith(_NOT_OWN_FILES)
                                         or name.endswith(" (deleted)"))


def own_ranges(maps_text: str) -> List[Range]:
    """The address ranges of the process's own mappings in a ``/proc/<pid>/maps``
    text, adjacent ones merged (one ``mbind`` call covers a thread's guard page and
    stack); a line it cannot read is skipped, never guessed at."""
    out: List[Range] = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or not _own(fields):
            continue
        try:
            start, end = (int(x, 16) for x in fields[0].split("-"))
        except ValueError:
            continue
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def read_own_ranges(pid: str = "self") -> List[Range]:
    """:func:`own_ranges` of ``/proc/<pid>/maps``; OSError if it cannot be read."""
    with open(f"/proc/{pid}/maps") as f:
        return own_ranges(f.read())
