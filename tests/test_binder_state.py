"""The Binder's state across a worker's life: pooled task workers that Ray reuses for
the next task, strict failures, and following a selected device in between.

On the DGX H100 fixture (GPUs 0-3 on node 0, 4-7 on node 1) the recording backend
stands in, so every assertion is on the exact calls the process would have made.
"""
import threading

import pytest

from ray_numa.apply import BindError
from ray_numa.binding import process_binder
from ray_numa.options import parse

NODE0, NODE1 = "0-55,112-167", "56-111,168-223"


@pytest.fixture
def binder(on_machine):
    on_machine("dgx-h100")
    return process_binder()


def test_a_strict_failure_fails_the_next_task_with_the_same_gpus_too(binder):
    # Ray keeps a worker whose task raised; its next task must not run unbound
    strict = parse({"strict": True, "cpus": [4095]})      # never an allowed CPU
    for _ in range(2):
        with pytest.raises(BindError, match="numa_bind \\(strict\\): none of the CPUs"):
            binder.bind(strict, ["0"], gpu_rule="assigned")


def test_the_next_assignment_rebinds_after_following_another_device(binder):
    opts = parse("auto")
    binder.bind(opts, ["0"], gpu_rule="assigned")
    assert binder.follow("4").cpus == NODE1                # the task drove GPU 4
    again = binder.bind(opts, ["0"], gpu_rule="assigned")  # the next task, same GPU
    assert (again.cpus, again.gpus, again.gpu_rule) == (NODE0, ("0",), "assigned")
    assert binder.follow("5").gpus == ("5",)               # not the union with GPU 4


def test_following_in_a_pooled_worker_keeps_the_pooled_memory_policy(binder):
    binder.bind(parse("auto"), ["0"], gpu_rule="assigned", pooled=True)
    followed = binder.follow("4")
    assert (followed.cpus, followed.memory, followed.mem_nodes) == (NODE1, "local", (1,))
    assert ("set_mempolicy", "local", "") in followed.calls
    assert not any(c[:2] == ("set_mempolicy", "bind") for c in followed.calls)


def test_cpu_only_tasks_after_a_gpu_task_undo_once_then_cost_nothing(binder):
    opts = parse("auto")
    binder.bind(opts, ["0"], pooled=True)
    first = binder.bind(opts, [], pooled=True)             # CPUs back, policy default
    assert first.status == "skipped" and "no GPU" in first.reason
    assert first.calls[-2:] == (("sched_setaffinity", "all-threads", "0-223"),
                                ("set_mempolicy", "default", ""))
    assert binder.bind(opts, [], pooled=True) is first     # nothing re-planned


def test_the_worker_hook_gives_cpu_only_work_policys_reason():
    # the worker hook leaves CPU-only work alone without loading policy: same words
    from ray_numa import policy, worker
    assert worker.NO_GPU == policy.NO_GPU


LOG_LINES = '''
    from ray_numa.binding import process_binder
    from ray_numa.options import parse
    binder = process_binder()
    for pooled in (False, True):       # a default GPU task (max_calls=1), then max_calls=0
        binder.bind(parse("auto"), [str(4 * pooled)], gpu_rule="assigned", pooled=True)
        print(binder.settle(pooled=pooled, why="test").memory, flush=True)
'''


def test_a_task_worker_says_one_line_with_the_policy_it_ended_with(machine_tree):
    """The INFO line and the record agree: the worker is bound as pooled at assignment,
    and the line is written once Ray says whether it is (``settle``)."""
    from tests.procs import run_child
    child = run_child(LOG_LINES, env={"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100"))})
    assert child.stdout.split() == ["bind", "local"]
    lines = [line for line in child.stderr.splitlines() if " bound: " in line]
    assert len(lines) == 2, child.stderr
    assert ", memory bind node(s) 0 (CPUs 0-55,112-167, memory bind 0, via record)" in lines[0]
    assert ", memory local node(s) 1 (CPUs 56-111,168-223, memory local 1, via record)" \
        in lines[1]


@pytest.mark.parametrize("pooled, memory", [(False, "bind"), (True, "local")])
def test_pages_move_once_when_ray_says_max_calls(binder, pooled, memory):
    """A task worker is bound as pooled until Ray says its max_calls (settle): the
    pages touched before move once, at settle, to the policy the task ends with
    (max_calls=1, Ray's default for GPU tasks: the policy asked for)."""
    first = binder.bind(parse("auto"), ["4"], gpu_rule="assigned", pooled=True)
    assert [c[0] for c in first.calls] == ["sched_setaffinity", "set_mempolicy"]
    settled = binder.settle(pooled=pooled, why="test")
    moves = [c for c in settled.calls if c[0] == "mbind_move"]
    assert moves == [("mbind_move", "0", "1")] and settled.memory == memory
    assert settled.calls[-1] == moves[0]            # after the policy it ended with


def test_a_catch_up_records_the_policy_it_set_not_one_a_follow_wanted_meanwhile(binder):
    """set_mempolicy(2) sets the calling thread's policy; when a follow on another
    thread moves ``wanted`` on while a pool thread catches up, the record keeps what
    the pool thread got, and it catches up again at its next task."""
    from ray_numa.apply import catch_up
    threads = binder.backend.threads
    threads.took(("bind", (0,)))
    real = binder.backend.set_mempolicy

    def set_mempolicy(mode, nodes):       # a follow takes over during the syscall
        real(mode, nodes)
        follow = threading.Thread(target=threads.took, args=(("bind", (1,)),))
        follow.start(), follow.join()
    binder.backend.set_mempolicy = set_mempolicy
    out = {}

    def pool():
        out["first"] = catch_up(binder.backend)
        out["recorded"] = threads.by_thread[threading.get_native_id()]
        binder.backend.set_mempolicy = real
        out["again"] = catch_up(binder.backend)
    t = threading.Thread(target=pool)
    t.start(), t.join()
    assert out == {"first": True, "recorded": ("bind", (0,)), "again": True}
    assert binder.backend.calls[-2:] == [("set_mempolicy", "bind", "0"),
                                         ("set_mempolicy", "bind", "1")]


def test_a_catch_up_never_republishes_the_binding_a_follow_replaced(binder):
    """Catch-up and follow record under one lock, and the catch-up reads the binding
    under it: the follow's record is the one left."""
    binder.bind(parse("auto"), ["0"], gpu_rule="assigned")
    paused, go = threading.Event(), threading.Event()
    real = binder._thread_policies

    def thread_policies():
        if threading.current_thread().name == "pool":
            paused.set(), go.wait()
        return real()
    binder._thread_policies = thread_policies
    pool = threading.Thread(target=binder.catch_up, name="pool")
    pool.start(), paused.wait()
    follow = threading.Thread(target=lambda: binder._record(
        binder.binding._replace(gpus=("0", "1"), gpu_rule="followed device")))
    follow.start()
    follow.join(timeout=1)       # without the lock it has recorded by now
    go.set()
    pool.join(), follow.join()
    assert binder.binding.gpu_rule == "followed device"
    assert binder.binding.gpus == ("0", "1")
