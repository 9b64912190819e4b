"""numa_maps parsing against the kernel's own format and this process's real maps."""
from ray_numa.locality import local_share, parse_numa_maps, resident_kb_by_node
from tests.inspect_proc import touch_buffer

# Lines in the format of the kernel's show_numa_map() (fs/proc/task_mmu.c):
# a 2 MiB huge-page mapping counts 512x a 4 KiB page.
SAMPLE = """\
7f0000000000 bind:1 anon=3 dirty=3 N0=1 N1=2 kernelpagesize_kB=4
7f1000000000 default file=/usr/lib/libc.so.6 mapped=10 N0=10 kernelpagesize_kB=4
7f2000000000 bind:1 anon=2 dirty=2 N1=2 kernelpagesize_kB=2048
7f3000000000 default
7f4000000000 default file=/dev/zero\\040(deleted) dirty=5 N0=5 kernelpagesize_kB=4
"""


def test_parse_weights_pages_by_page_size():
    assert parse_numa_maps(SAMPLE) == {0: 64, 1: 8 + 4096}


def test_anonymous_keeps_only_mappings_with_anonymous_pages():
    assert parse_numa_maps(SAMPLE, anonymous=True) == {0: 24, 1: 8 + 4096}


def test_local_share_is_percent_of_resident_memory():
    kb = parse_numa_maps(SAMPLE)
    assert local_share(kb, [1]) == round(100 * 4104 / 4168, 2)
    assert local_share(kb, [0, 1]) == 100.0
    assert local_share({}, [0]) == 0.0


def test_this_process_real_numa_maps_count_a_touched_buffer():
    before = sum(resident_kb_by_node(anonymous=True).values())
    buf, _ = touch_buffer(32)
    after = sum(resident_kb_by_node(anonymous=True).values())
    assert after - before >= 30 * 1024
    buf.close()
