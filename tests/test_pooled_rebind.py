"""Rebinding a pooled task worker, on this machine's real kernel.

The kernel fact behind it: ``set_mempolicy`` sets the *calling thread's* policy and
a new thread inherits its creator's, so a thread started while bound keeps that
policy whatever a later rebind does in another thread (there is no syscall to set
another thread's policy). A worker Ray may reuse for a task with other GPUs
therefore allocates "local" and lets the CPU affinity, which a rebind sets on every
thread, steer where memory lands. Each case runs in a child (NVML from a fixture:
GPUs 0 and 1 on node 0) and asks every thread for its own ``get_mempolicy`` and
where the pages it touches land (``numa_maps``).
"""
import os
import shutil

import pytest

from tests.fixtures import nvml_only
from tests.procs import child_report

pytestmark = pytest.mark.skipif(shutil.which("numactl") is None, reason="needs numactl")
LAST_CPU = max(os.sched_getaffinity(0))

REBIND = f'''
    import queue
    from ray_numa import locality, syscalls
    from ray_numa.binding import process_binder
    from ray_numa.options import parse
    opts = parse({{"cpus": [{LAST_CPU}]}})          # "auto", explicit CPUs
    asks, answers = queue.Queue(), queue.Queue()

    def started_while_bound():                      # like a task's worker pool thread
        while asks.get():
            buf, addr = touch_buffer(8)
            answers.put((syscalls.get_mempolicy(), node_pages(addr)))

    first = process_binder().bind(opts, ["0"], pooled=POOLED)
    thread = threading.Thread(target=started_while_bound, daemon=True)
    thread.start()
    second = process_binder().bind(opts, ["1"], pooled=POOLED)   # the next task's GPU
    asks.put(True)
    (mode, nodes), pages = answers.get(timeout=30)
    asks.put(False)
    report(first=first.as_dict(), second=second.as_dict(),
           old_thread_policy=[mode, list(nodes)], old_thread_pages=pages,
           resident=locality.resident_kb_by_node())
'''


def rebind(tmp_path, pooled):
    root = nvml_only.write(tmp_path / "nvml")
    return child_report(REBIND.replace("POOLED", str(pooled)),
                        env={"RAY_NUMA_FIXTURE": str(root)})


def test_pooled_worker_rebind_reaches_threads_started_while_bound(tmp_path):
    r = rebind(tmp_path, pooled=True)
    for b in (r["first"], r["second"]):
        assert b["status"] == "bound" and b["memory"] == "local" and b["mem_nodes"] == [0]
        assert any("pooled task worker" in n and "'bind'" in n for n in b["notes"])
    assert r["second"]["gpus"] == ["1"]
    assert r["mempolicy"] == ["local", []]           # the thread that runs the task
    assert r["old_thread_policy"] == ["local", []]   # and the one the last task started
    assert r["thread_cpus"] == [str(LAST_CPU)]       # every thread follows the affinity
    assert set(r["old_thread_pages"]) == {"0"} and set(r["resident"]) == {"0"}   # JSON keys


def test_a_strict_policy_stays_with_threads_started_while_bound(tmp_path):
    # why pooled workers do not use "bind": the kernel keeps it per thread (an actor
    # binds once, so it keeps "bind")
    r = rebind(tmp_path, pooled=False)
    assert r["second"]["memory"] == "bind" and r["mempolicy"] == ["bind", [0]]
    assert r["old_thread_policy"] == ["bind", [0]]
