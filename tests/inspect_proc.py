"""What a process really has, read from the kernel: imported by test children and
by actors inside Ray workers."""
from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Dict


def status_field(name: str, pid: str = "self") -> str:
    text = open(f"/proc/{pid}/status").read()
    return re.search(rf"^{name}:\s*(\S*)", text, re.M).group(1)


def thread_cpus() -> list:
    """Distinct Cpus_allowed_list values over every live thread of this process (a
    thread that exits between the listing and the read has none to report)."""
    values = set()
    for t in os.listdir("/proc/self/task"):
        try:
            values.add(status_field("Cpus_allowed_list", f"self/task/{t}"))
        except FileNotFoundError:
            pass
    return sorted(values)


def numactl_show() -> Dict[str, str]:
    out = subprocess.run(["numactl", "--show"], capture_output=True, text=True).stdout
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def inspect(**extra) -> Dict:
    from ray_numa import current_binding, syscalls
    data = {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)),
            "thread_cpus": thread_cpus(),
            "cpus_allowed": status_field("Cpus_allowed_list"),
            "mems_allowed": status_field("Mems_allowed_list"),
            "mempolicy": list(syscalls.get_mempolicy()),
            "binding": current_binding().as_dict(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    data.update(extra)
    return json.loads(json.dumps(data, default=str))


def report(**extra) -> None:
    print(json.dumps(inspect(**extra), default=str))


def touch_buffer(mib: int):
    """Allocate and first-touch ``mib`` MiB of private anonymous memory (malloc's kind;
    ``mmap.mmap(-1, n)`` alone is MAP_SHARED); returns (mmap, address).

    A PROT_NONE page on each side keeps it one mapping of its own: the kernel merges
    adjacent private anonymous mappings, and numa_maps counts per mapping."""
    import ctypes
    import mmap
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, (mib << 20) + 2 * page, flags=mmap.MAP_PRIVATE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    for guard in (base, base + page + (mib << 20)):
        if libc.mprotect(ctypes.c_void_p(guard), page, 0) != 0:     # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect")
    addr = base + page
    ctypes.memset(addr, 1, mib << 20)
    return buf, addr


def node_pages(addr: int) -> Dict[int, int]:
    """Pages per NUMA node of the mapping starting at ``addr`` (/proc/self/numa_maps)."""
    for line in open("/proc/self/numa_maps"):
        if line.startswith(f"{addr:x} "):
            return {int(k[1:]): int(v) for k, v in
                    (f.split("=") for f in line.split() if re.match(r"N\d+=", f))}
    raise LookupError(f"no mapping at {addr:#x} in /proc/self/numa_maps")


def share_on(pages: Dict[int, int], node: int) -> float:
    total = sum(pages.values())
    return pages.get(node, 0) / total if total else 0.0


def mapping_pages(addr: int, pid: str = "self") -> Dict[int, int]:
    """Pages per NUMA node of the mapping that *contains* ``addr`` (e.g. a buffer inside
    Ray's object store): its start from /proc/<pid>/maps, its counts from numa_maps."""
    for line in open(f"/proc/{pid}/maps"):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= addr < end:
            break
    else:
        raise LookupError(f"no mapping holds {addr:#x} in /proc/{pid}/maps")
    for line in open(f"/proc/{pid}/numa_maps"):
        if line.startswith(f"{start:x} "):
            return {int(k[1:]): int(v) for k, v in
                    (f.split("=") for f in line.split() if re.match(r"N\d+=", f))}
    return {}


def thread_policy(tid: int) -> str:
    """Thread ``tid``'s own memory policy as numa_maps prints it ("bind:1", "default"):
    numa_maps shows the policy of the thread whose /proc/<pid>/task/<tid> it is read
    from for every mapping without a policy of its own (fs/proc/task_mmu.c)."""
    for line in open(f"/proc/self/task/{tid}/numa_maps"):
        fields = line.split()
        if " anon=" in line or "[heap]" in line:
            return fields[1]
    return open(f"/proc/self/task/{tid}/numa_maps").readline().split()[1]
