"""Where a process's memory really is: ``/proc/<pid>/numa_maps``, summed per node.

A memory policy says where pages *should* go; ``numa_maps`` says where they are
(the kernel's per-mapping ``N<node>=<pages>`` counts). This is what `ray-numa audit`
and the VM tier report as locality. Pure reading: nothing here changes a process.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Union

_NODE_PAGES = re.compile(r"\bN(\d+)=(\d+)")
_PAGE_KB = re.compile(r"\bkernelpagesize_kB=(\d+)")


def _own(line: str) -> bool:
    return " anon=" in line or " file=/dev/zero" in line


def parse_numa_maps(text: str, anonymous: bool = False) -> Dict[int, int]:
    """KiB resident per NUMA node over the mappings of a ``numa_maps`` text.

    Counts are weighted by each mapping's page size, so a huge-page mapping counts
    for its real size rather than as one page. ``anonymous`` keeps only mappings
    holding anonymous pages (``anon=``: heap, stacks, buffers): the process's own
    memory. File pages (the interpreter, shared libraries) sit wherever their first
    reader in the whole machine loaded them, so they say nothing about the binding.
    """
    out: Dict[int, int] = {}
    for line in text.splitlines():
        if anonymous and not _own(line):
            continue
        size = _PAGE_KB.search(line)
        page_kb = int(size.group(1)) if size else 4
        for node, pages in _NODE_PAGES.findall(line):
            out[int(node)] = out.get(int(node), 0) + int(pages) * page_kb
    return out


def resident_kb_by_node(pid: Union[int, str] = "self",
                        anonymous: bool = False) -> Dict[int, int]:
    """KiB of ``pid``'s resident memory on each NUMA node (see :func:`parse_numa_maps`
    for ``anonymous``); raises OSError (e.g. PermissionError for another user's
    process, FileNotFoundError once it exited)."""
    with open(f"/proc/{pid}/numa_maps") as f:
        return parse_numa_maps(f.read(), anonymous)


def local_share(kb_by_node: Dict[int, int], nodes: Iterable[int]) -> float:
    """Percent (0-100) of the resident memory that sits on ``nodes``; 0.0 if none."""
    total = sum(kb_by_node.values())
    wanted = set(nodes)
    local = sum(kb for node, kb in kb_by_node.items() if node in wanted)
    return round(100.0 * local / total, 2) if total else 0.0
