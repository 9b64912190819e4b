"""The real-kernel path on this machine: syscalls, numactl, threads, ladders.

Each test runs a child process and asserts on what it really has: affinity of
every thread, /proc/self/status, get_mempolicy and ``numactl --show``.
"""
import os
import shutil

import pytest

from tests.procs import child_report, run_child

pytestmark = pytest.mark.skipif(shutil.which("numactl") is None,
                                reason="numactl is not installed (apt-get install numactl)")
LAST_CPU = max(os.sched_getaffinity(0))


def test_in_process_bind_covers_threads_started_before_it():
    r = child_report(f'''
        import time
        from ray_numa.binding import process_binder
        from ray_numa.options import parse
        stop = threading.Event()
        workers = [threading.Thread(target=stop.wait) for _ in range(3)]
        [w.start() for w in workers]
        b = process_binder().bind(parse({{"node": 0, "cpus": [{LAST_CPU}]}}))
        late = threading.Thread(target=stop.wait); late.start()
        report(binding=b.as_dict(), show=numactl_show())
        stop.set()
    ''')
    assert r["affinity"] == [LAST_CPU]
    assert r["thread_cpus"] == [str(LAST_CPU)]           # all 5 threads, one answer
    assert r["cpus_allowed"] == str(LAST_CPU)
    assert r["mempolicy"] == ["bind", [0]]
    assert r["show"]["policy"] == "bind" and r["show"]["membind"] == "0"
    assert r["binding"]["status"] == "bound" and r["binding"]["backend"] == "syscall"
    assert r["binding"]["memory"] == "bind" and r["binding"]["mem_nodes"] == [0]


@pytest.mark.parametrize("memory,policy", [("preferred", "preferred"),
                                           ("interleave", "interleave"), ("none", "default")])
def test_memory_policies_reach_the_kernel(memory, policy):
    r = child_report(f'''
        from ray_numa import bind_current_process
        b = bind_current_process(node=0, options={{"memory": "{memory}"}})
        report(binding=b.as_dict())
    ''')
    assert r["mempolicy"][0] == policy
    assert r["binding"]["memory"] == memory


def test_numactl_prefix_probe_and_worker_adoption():
    from ray_numa.apply import probe_numactl
    from ray_numa.planning import plan_for
    from ray_numa.options import parse
    plan = plan_for(parse({"node": 0, "cpus": [0]}))
    argv, memory, notes = probe_numactl(plan)
    assert argv == ["numactl", "--physcpubind=0", "--membind=0"] and memory == "bind"
    r = child_report('''
        import json
        from ray_numa.binding import process_binder
        from ray_numa.options import parse
        b = process_binder().adopt_numactl(parse({"node": 0, "cpus": [0]}),
                                           ["numactl", "--physcpubind=0", "--membind=0"])
        report(binding=b.as_dict(), show=numactl_show())
    ''', argv_prefix=argv)
    assert r["affinity"] == [0] and r["mempolicy"] == ["bind", [0]]
    assert r["binding"]["backend"] == "numactl" and r["binding"]["cpus"] == "0"


def test_explicit_missing_node_warns_and_runs_unbound():
    proc = run_child('''
        from ray_numa import bind_current_process
        b = bind_current_process(node=7)
        report(binding=b.as_dict())
    ''')
    assert "NUMA node 7 does not exist; this machine has nodes 0" in proc.stderr
    assert proc.stderr.count("WARNING") == 1
    import json
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["binding"]["status"] == "skipped"
    assert r["affinity"] == sorted(os.sched_getaffinity(0)) and r["mempolicy"][0] == "default"


def test_strict_turns_the_same_message_into_an_error():
    proc = run_child('''
        from ray_numa import bind_current_process
        bind_current_process(node=7, strict=True)
    ''', check=False)
    assert proc.returncode != 0
    assert "BindError: numa_bind (strict): NUMA node 7" in proc.stderr


def test_kill_switch_leaves_the_process_alone():
    r = child_report('''
        from ray_numa import bind_current_process
        report(binding=bind_current_process(node=0, options={"cpus": [0]}).as_dict())
    ''', env={"RAY_NUMA_DISABLE": "1"})
    assert r["binding"]["status"] == "off" and "RAY_NUMA_DISABLE" in r["binding"]["reason"]
    assert r["affinity"] == sorted(os.sched_getaffinity(0))


def test_unbind_restores_start_affinity_and_default_policy():
    r = child_report(f'''
        from ray_numa.binding import process_binder
        from ray_numa.options import parse
        binder = process_binder()
        binder.bind(parse({{"node": 0, "cpus": [{LAST_CPU}]}}))
        mid = sorted(os.sched_getaffinity(0))
        b = binder.unbind("test")
        report(mid=mid, binding=b.as_dict())
    ''')
    assert r["mid"] == [LAST_CPU]
    assert r["affinity"] == sorted(os.sched_getaffinity(0))
    assert r["mempolicy"] == ["default", []] and r["binding"]["status"] == "unbound"


def test_permission_ladder_falls_back_and_names_sys_nice():
    """seccomp-style EPERM on set_mempolicy: bind -> preferred -> CPUs only."""
    from ray_numa.apply import apply_plan, SYS_NICE_FIX
    from ray_numa.policy import Plan

    class Denied:
        name = "denied"
        def __init__(self):
            self.tried = []
        def set_affinity(self, cpus):
            return 1
        def set_mempolicy(self, mode, nodes):
            self.tried.append(mode)
            raise PermissionError(1, f"set_mempolicy({mode}): Operation not permitted")
        def migrate(self, old, new):
            raise AssertionError("no migration without a memory policy")

    backend = Denied()
    plan = Plan(cpus=frozenset({0}), cpu_nodes=(0,), mem_nodes=(0,), memory="bind", reason="t")
    applied = apply_plan(plan, backend, migrate=True, all_nodes=[0, 1])
    assert backend.tried == ["bind", "preferred"]
    assert applied.memory == "none"
    assert any(SYS_NICE_FIX in n for n in applied.notes)


def test_no_syscall_numbers_say_so_not_add_sys_nice(monkeypatch):
    """On an architecture ray-numa has no syscall numbers for (riscv64, s390x) the
    real set_mempolicy wrapper raises ENOSYS: the note must not send the user to add
    SYS_NICE, which would not help."""
    from ray_numa import syscalls
    from ray_numa.apply import NO_MEMPOLICY, SYS_NICE_FIX, apply_plan
    from ray_numa.policy import Plan
    monkeypatch.setattr(syscalls.platform, "machine", lambda: "riscv64")

    class Riscv:
        name = "riscv"
        def set_affinity(self, cpus):
            return 1
        def set_mempolicy(self, mode, nodes):
            syscalls.set_mempolicy(mode, nodes)

    plan = Plan(cpus=frozenset({0}), cpu_nodes=(0,), mem_nodes=(0,), memory="bind", reason="t")
    applied = apply_plan(plan, Riscv(), migrate=True, all_nodes=[0, 1])
    assert applied.memory == "none"
    assert any(NO_MEMPOLICY in n for n in applied.notes)
    assert not any(SYS_NICE_FIX in n for n in applied.notes)


def test_log_level_env_controls_the_binding_line():
    code = '''
        from ray_numa import bind_current_process
        bind_current_process(node=0)
        report()
    '''
    assert "[ray_numa] INFO pid" in run_child(code).stderr
    assert "[ray_numa]" not in run_child(code, env={"RAY_NUMA_LOG_LEVEL": "WARNING"}).stderr


def test_a_pooled_worker_whose_next_gpu_cannot_be_bound_is_released(machine_tree):
    """Bound for one GPU, then a GPU with an unknown node: back to the start state."""
    r = child_report('''
        from ray_numa.binding import process_binder
        from ray_numa.options import parse
        binder = process_binder()
        first = binder.bind(parse("auto"), ["0"])
        second = binder.bind(parse("auto"), ["1"])
        report(first=first.as_dict(), second=second.as_dict())
    ''', env={"RAY_NUMA_FIXTURE": str(machine_tree("mixed")), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert r["first"]["status"] == "bound" and r["first"]["cpus"] == "0-31"
    assert r["second"]["status"] == "skipped" and "is unknown" in r["second"]["reason"]
    assert [list(c) for c in r["second"]["calls"]][-2:] == [
        ["sched_setaffinity", "all-threads", "0-63"], ["set_mempolicy", "default", ""]]


def test_strict_refuses_a_weaker_memory_policy_than_asked(machine_tree):
    """seccomp denies set_mempolicy: non-strict degrades, strict fails with the fix."""
    r = child_report('''
        import errno
        from ray_numa.apply import BindError
        from ray_numa.binding import process_binder
        from ray_numa.options import parse
        binder = process_binder()
        def denied(mode, nodes):
            raise PermissionError(errno.EPERM, f"set_mempolicy({mode}): Operation not permitted")
        binder.backend.set_mempolicy = denied
        lenient = binder.bind(parse({"node": 0}))
        try:
            binder.bind(parse({"node": 1, "strict": True}))
            strict = "bound"
        except BindError as exc:
            strict = str(exc)
        report(lenient=lenient.as_dict(), strict=strict)
    ''', env={"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100"))})
    assert r["lenient"]["status"] == "bound" and r["lenient"]["memory"] == "none"
    assert any("SYS_NICE" in n for n in r["lenient"]["notes"])
    assert r["strict"].startswith("numa_bind (strict): ")
    assert "set_mempolicy(bind): Operation not permitted" in r["strict"]
    assert "--cap-add SYS_NICE" in r["strict"]
