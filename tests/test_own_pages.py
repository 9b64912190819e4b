"""Binding moves only the process's own pages (issue 21.2).

``migrate_pages(2)``: "Pages shared with another process will be moved only if the
initiating process has the CAP_SYS_NICE privilege" -- and with it (root, or the
capability recommended for containers) Ray's object store and /dev/shm segments moved
with every bind. ``mbind(2)`` with ``MPOL_MF_MOVE`` over the private anonymous mappings
(proc(5): perms ``p``, no file or ``[heap]``/``[stack]``/``[anon:...]``) moves only
pages this process alone maps (man7.org/linux/man-pages/man2/mbind.2.html). The VM
tier checks where the pages end up on a real 2-node kernel.
"""
import shutil
import subprocess
import textwrap

import pytest

from ray_numa.mappings import anon_starts, device_fstypes, own_ranges
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
        (0x00401000, 0x00402000),                 # the executable's data (writable)
        (0x00500000, 0x00600000),                 # heap
        (0x30000000, 0x30802000),                 # guard page + stack + named arena, merged
        (0x50000000, 0x50010000),                 # libc's data (relocated: its own copy)
        (0x7ffd0000, 0x7ffe0000),                 # main stack
    ]                 # not: /dev/shm, /dev/zero shared, the memfd, [vvar], [vdso], ...


# /proc/self/mountinfo (proc(5)): /tmp and /run on tmpfs, a Kubernetes emptyDir (Memory).
MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:26 / /tmp rw,nosuid shared:2 - tmpfs tmpfs rw
24 22 0:27 / /run rw,nosuid master:3 shared:4 - tmpfs tmpfs rw,mode=755
25 22 0:30 / /var/lib/kubelet/pods/x/volumes/kubernetes.io~empty-dir/cache rw - tmpfs tmpfs rw
26 22 0:31 / /dev/hugepages rw - hugetlbfs hugetlbfs rw
27 22 0:32 / /data rw - btrfs /dev/sdb rw
garbage
"""
MAPS_FILES = """\
00400000-00401000 rw-p 00000000 00:1a 11   /tmp/scratch.bin
00500000-00501000 rw-p 00000000 00:1b 12   /run/user/0/cache
00600000-00601000 rw-p 00000000 00:1e 13   /cache/model.bin
00700000-00701000 rw-p 00000000 00:1f 14   /dev/hugepages/buf
00800000-00801000 rw-p 00000000 00:20 15   /data/table.bin
00900000-00901000 rw-p 00000000 00:63 16   /nowhere/known.bin
00a00000-00a01000 rw-p 00000000 08:01 17   /home/u/table.bin
00b00000-00c00000 r--p 00000000 08:01 18   /models/weights.safetensors
00d00000-00d01000 r--p 00000000 08:01 19   /usr/lib/libfoo.so
00e00000-00e10000 rw-p 00000000 00:05 5    /dev/zero
"""


def test_files_on_tmpfs_anywhere_are_not_own_and_read_only_files_only_when_written():
    """A private mapping of a tmpfs/hugetlbfs file (any mount, decided by fstype in
    mountinfo, proc(5)) would get the FILE's shared policy from mbind (mm/shmem.c
    shmem_set_policy); an unlisted anonymous device (0:N) is left out as well. A
    read-only private file mapping counts only with anon= pages in numa_maps (relro
    data it wrote once); its page-cache pages (weights mmap'd read-only) stay put.
    A private /dev/zero mapping is anonymous memory."""
    fstypes = device_fstypes(MOUNTINFO)
    assert fstypes[(0, 26)] == "tmpfs" and fstypes[(8, 1)] == "ext4"
    anon = anon_starts("00d00000 default file=/usr/lib/libfoo.so anon=1 dirty=1 N0=1\n"
                       "00b00000 default file=/models/weights.safetensors mapped=256 N0=256\n")
    assert anon == {0x00d00000}
    assert own_ranges(MAPS_FILES, fstypes, anon) == [
        (0x00800000, 0x00801000),                 # btrfs
        (0x00a00000, 0x00a01000),                 # ext4 on sda1
        (0x00d00000, 0x00d01000),                 # read-only, but written (relro)
        (0x00e00000, 0x00e10000),                 # private /dev/zero
    ]


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


#: Child-script prelude: every ``syscalls.mbind`` call after ``syscalls.mbind = mbind``
#: is recorded in ``calls`` as [start, end, mode] and then made.
RECORD_MBIND = textwrap.indent("""
from ray_numa import apply, syscalls
calls = []
real = syscalls.mbind
def mbind(start, length, mode, nodes=(), flags=0):
    calls.append([start, start + length, mode])
    real(start, length, mode, nodes, flags)
""", " " * 8)   # as indented as the scripts it precedes


def test_a_mapping_with_a_policy_of_its_own_keeps_it():
    """libnuma's numa_alloc_interleaved/onnode mbind their buffer; migrating must not
    replace that policy with MPOL_DEFAULT (get_mempolicy(2) MPOL_F_ADDR reads it)."""
    r = child_report(RECORD_MBIND + '''
        buf, addr = touch_buffer(8)
        syscalls.mbind(addr, 8 << 20, "interleave", [0])
        syscalls.mbind = mbind
        apply.SyscallBackend().migrate([], [0])
        report(calls=calls, addr=addr, policy=syscalls.vma_policy(addr))
    ''')
    assert r["policy"] == "interleave"
    assert not [c for c in r["calls"] if c[0] <= r["addr"] < c[1]]


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -m and mount (root)")
def test_a_private_mapping_of_a_file_on_another_tmpfs_leaves_the_files_policy(tmp_path):
    """A tmpfs mounted anywhere (here over a temp dir, in a mount namespace of its own):
    mbind over a private mapping of its file would set the FILE's shared policy, which
    other processes allocate by (and MPOL_MF_MOVE would move the file's pages), so no
    mbind call covers it; a shared policy another process set on a file survives."""
    r = child_report(RECORD_MBIND + '''
        import ctypes, mmap
        def mapping(name, policy):
            fd = os.open(os.path.join(os.environ["DIR"], name), os.O_RDWR | os.O_CREAT)
            os.ftruncate(fd, 4 << 20)
            shared = mmap.mmap(fd, 4 << 20, mmap.MAP_SHARED)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
            if policy:
                syscalls.mbind(addr, 4 << 20, policy, [0])
            private = mmap.mmap(fd, 4 << 20, mmap.MAP_PRIVATE)
            private.write(b"x" * (4 << 20))
            return shared, addr, private, ctypes.addressof(ctypes.c_char.from_buffer(private))
        keep = [mapping("plain", None), mapping("interleaved", "interleave")]
        syscalls.mbind = mbind
        apply.SyscallBackend().migrate([], [0])
        report(calls=calls, private=[k[3] for k in keep],
               policy=syscalls.vma_policy(keep[1][1]))
    ''', env={"DIR": str(tmp_path)},
        argv_prefix=["unshare", "-m", "sh", "-c",
                     'mount -t tmpfs none "$1" && shift && exec "$@"', "sh", str(tmp_path)])
    assert r["policy"] == "interleave"
    assert not [c for c in r["calls"] for a in r["private"] if c[0] <= a < c[1]]


def test_a_hole_in_a_merged_range_moves_the_rest_and_leaves_no_mapping_policy():
    """One unmapped page makes mbind(2) fail the whole range with EFAULT. A munmap
    between reading maps and the move (a), or between the move and the policy's
    removal (b): the pieces mapped now are moved one by one, none keeps MPOL_BIND,
    and nothing is reported failed."""
    r = child_report('''
        import ctypes, mmap
        from ray_numa import apply, syscalls
        libc = ctypes.CDLL(None, use_errno=True)
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        P = mmap.PAGESIZE
        bufs = [touch_buffer(1) for _ in range(2)]
        holes = {"bind": bufs[0][1] + 100 * P, "default": bufs[1][1] + 100 * P}
        calls, real = [], syscalls.mbind
        def mbind(start, length, mode, nodes=(), flags=0):
            hole = holes.get(mode)
            if hole and start <= hole < start + length:
                del holes[mode]                     # (a) before the move, (b) after it
                libc.munmap(hole, P)
            calls.append([start, start + length, mode])
            real(start, length, mode, nodes, flags)
        syscalls.mbind = mbind
        ranges, failed = apply.SyscallBackend().migrate([], [0])
        pieces = [(b[1], b[1] + 100 * P) for b in bufs] + [
            (b[1] + 101 * P, b[1] + (1 << 20)) for b in bufs]
        report(failed=list(failed), policies=[syscalls.vma_policy(s) for s, _ in pieces],
               moved=[any(c[0] <= s and e <= c[1] and c[2] == "bind" and c[1] - c[0] < 1 << 20
                          for c in calls) for s, e in pieces])
    ''')
    assert r["failed"] == []
    assert r["policies"] == ["default"] * 4
    assert r["moved"] == [True] * 4


def test_migrate_never_raises_out_of_apply_when_maps_cannot_be_read(monkeypatch):
    """A maps text too big to read (MemoryError) or unreadable (OSError) after the
    affinity is set: a note, migrated False, never an exception."""
    from ray_numa import apply, mappings
    def too_big(*_a, **_k):
        raise MemoryError()
    monkeypatch.setattr(mappings, "read_own_mappings", too_big)
    moved, notes = apply.migrate_touched(None, apply.SyscallBackend(), "bind", (0,), (0, 1))
    assert moved is False and "MemoryError" in notes[0]
