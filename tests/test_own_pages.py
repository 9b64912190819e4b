"""Binding moves only the process's own pages (issue 21.2).

``migrate_pages(2)``: "Pages shared with another process will be moved only if the
initiating process has the CAP_SYS_NICE privilege" -- and with it (root, or the
capability recommended for containers) Ray's object store and /dev/shm segments moved
with every bind. ``mbind(2)`` with ``MPOL_MF_MOVE`` over the private anonymous mappings
(proc(5): perms ``p``, no file or ``[heap]``/``[stack]``/``[anon:...]``) moves only
pages this process alone maps (man7.org/linux/man-pages/man2/mbind.2.html). The VM
tier checks where the pages end up on a real 2-node kernel.
"""
from ray_numa.mappings import own_ranges
from tests.procs import child_report

# /proc/<pid>/maps of a Ray worker, shortened (addresses made small and adjacent).
MAPS = """\
00400000-00401000 r--p 00000000 08:01 1234   /usr/bin/python3.11
00401000-00402000 rw-p 00001000 08:01 1234   /usr/bin/python3.11
00500000-00600000 rw-p 00000000 00:00 0      [heap]
10000000-14000000 rw-s 00000000 00:1a 77     /dev/shm/plasmaXyZ (deleted)
20000000-24000000 rw-s 00000000 00:1a 78     /dev/shm/psm_2f1a
30000000-30001000 ---p 00000000 00:00 0
30001000-30801000 rw-p 00000000 00:00 0
30801000-30802000 rw-p 00000000 00:00 0      [anon:glibc: malloc arena]
40000000-44000000 rw-s 00000000 00:01 99     /dev/zero (deleted)
50000000-50010000 rw-p 00000000 08:01 555    /usr/lib/libc.so.6
60000000-60001000 rw-p 00000000 00:05 4242   /memfd:cuda (deleted)
61000000-61001000 rw-p 00000000 00:1a 4243   /dev/shm/private-map
62000000-62001000 rw-p 00000000 08:01 4244   /opt/lib/old.so (deleted)
7ffd0000-7ffe0000 rw-p 00000000 00:00 0      [stack]
7ffe1000-7ffe5000 r--p 00000000 00:00 0      [vvar]
7ffe5000-7ffe7000 r-xp 00000000 00:00 0      [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0  [vsyscall]
garbage line
"""


def test_only_private_mappings_of_ordinary_files_and_anonymous_memory_are_own():
    assert own_ranges(MAPS) == [
        (0x00400000, 0x00402000),                 # the executable's segments, merged
        (0x00500000, 0x00600000),                 # heap
        (0x30000000, 0x30802000),                 # guard page + stack + named arena, merged
        (0x50000000, 0x50010000),                 # libc's data (relocated: its own copy)
        (0x7ffd0000, 0x7ffe0000),                 # main stack
    ]                 # not: /dev/shm, /dev/zero shared, the memfd, [vvar], [vdso], ...


def test_a_bind_moves_the_private_buffer_and_leaves_the_shared_segment(tmp_path):
    """On this kernel: the backend passes mbind the private buffer's range (move, then
    the mapping's policy removed again) and never the /dev/shm segment's."""
    r = child_report(f'''
        import ctypes, mmap
        from ray_numa import apply, syscalls
        calls = []
        real = syscalls.mbind
        def mbind(start, length, mode, nodes=(), flags=0):
            calls.append([start, start + length, mode, list(nodes), flags])
            real(start, length, mode, nodes, flags)
        syscalls.mbind = mbind
        own, own_addr = touch_buffer(8)
        fd = os.open("/dev/shm/ray-numa-test-{tmp_path.name}", os.O_RDWR | os.O_CREAT)
        os.unlink("/dev/shm/ray-numa-test-{tmp_path.name}")
        os.ftruncate(fd, 8 << 20)
        shared = mmap.mmap(fd, 8 << 20, mmap.MAP_SHARED)
        shared.write(b"x" * (8 << 20))
        shared_addr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
        apply.SyscallBackend().migrate([], [0])
        policy = next(l.split()[1] for l in open("/proc/self/numa_maps")
                      if l.startswith(f"{{own_addr:x}} "))
        report(calls=calls, own=own_addr, shared=shared_addr, policy=policy)
    ''')
    covers = lambda addr: [c for c in r["calls"] if c[0] <= addr < c[1]]
    assert not covers(r["shared"])
    assert [c[2:] for c in covers(r["own"])] == [["bind", [0], 2], ["default", [], 0]]
    assert r["policy"] == "default"      # no mapping policy left behind
