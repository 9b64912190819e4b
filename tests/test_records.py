"""The memory ladder and the record: what the process ends up with is what
``current_binding()`` says, on fixture machines (recording backend) and this kernel."""
import errno
import threading

import pytest

from ray_numa import binding, syscalls
from ray_numa.apply import RecordingBackend, apply_plan, numactl_argv
from ray_numa.options import parse
from ray_numa.policy import Plan

NPS4_SOCKET = Plan(cpus=frozenset(range(24)), cpu_nodes=(0, 1, 2, 3), mem_nodes=(0, 1, 2, 3),
                   memory="preferred", reason="t", home=1)


class Kernel(RecordingBackend):
    """A recording backend whose set_mempolicy fails for some modes with an errno."""

    def __init__(self, fail):
        super().__init__()
        self.fail = fail

    def set_mempolicy(self, mode, nodes):
        if mode in self.fail:
            self.calls.append(("refused", mode))
            raise OSError(self.fail[mode], f"set_mempolicy({mode}): {errno.errorcode[self.fail[mode]]}")
        super().set_mempolicy(mode, nodes)


def test_preferred_over_several_nodes_is_preferred_many_and_migrates_home():
    backend = Kernel({})
    applied = apply_plan(NPS4_SOCKET, backend, migrate=True, all_nodes=range(8))
    assert ("set_mempolicy", "preferred_many", "0-3") in backend.calls
    assert ("mbind_move", "4-7", "1") in backend.calls
    assert applied.memory == "preferred" and applied.mem_nodes == (0, 1, 2, 3)
    assert numactl_argv(NPS4_SOCKET)[-1] == "--preferred-many=0-3"


def test_kernel_without_preferred_many_prefers_the_gpus_node():
    backend = Kernel({"preferred_many": errno.EINVAL})
    applied = apply_plan(NPS4_SOCKET, backend, migrate=True, all_nodes=range(8))
    assert backend.calls[-2:] == [("set_mempolicy", "preferred", "1"),
                                  ("mbind_move", "0,2-7", "1")]
    assert applied.memory == "preferred" and applied.mem_nodes == (1,)
    assert numactl_argv(NPS4_SOCKET, "preferred", (1,))[-1] == "--preferred=1"


@pytest.mark.parametrize("memory", ["bind", "interleave"])
def test_refused_policy_falls_back_to_the_gpus_node(memory):
    plan = Plan(cpus=frozenset({0}), cpu_nodes=(0, 1), mem_nodes=(0, 1), memory=memory,
                reason="t", home=1)
    backend = Kernel({memory: errno.EPERM, "preferred_many": errno.EINVAL})
    applied = apply_plan(plan, backend, migrate=False, all_nodes=(0, 1))
    assert applied.memory == "preferred" and applied.mem_nodes == (1,)
    assert backend.calls[-1] == ("set_mempolicy", "preferred", "1")


def _binder_with(on_machine, name, kernel):
    on_machine(name)
    binder = binding.process_binder()
    binder.backend = kernel
    return binder


def test_record_names_the_node_actually_preferred(on_machine):
    binder = _binder_with(on_machine, "amd-nps4", Kernel({"bind": errno.EPERM,
                                                          "preferred_many": errno.EINVAL}))
    b = binder.bind(parse({"cpus": "socket"}), ["0"])
    assert b.status == "bound" and b.memory == "preferred" and b.mem_nodes == (1,)
    assert binding.current_binding() == b


def test_record_after_a_non_permission_error_keeps_the_pinned_cpus(on_machine):
    binder = _binder_with(on_machine, "dgx-h100", Kernel({"bind": errno.EINVAL}))
    b = binder.bind(parse("auto"), ["5"])
    assert b.status == "bound" and b.cpus == "56-111,168-223"
    assert b.memory == "none" and b.mem_nodes == ()
    assert any("CPUs stay pinned to 56-111,168-223" in n for n in b.notes)
    with pytest.raises(binding.BindError):
        binder.bind(parse({"strict": True}), ["4"])


def test_numactl_record_reads_the_nodes_numactl_was_given(on_machine):
    on_machine("dgx-h100")
    b = binding.process_binder().adopt_numactl(
        parse({"node": [0, 1], "memory": "preferred"}),
        ["numactl", "--physcpubind=0-223", "--preferred=1"])
    assert b.memory == "preferred" and b.mem_nodes == (1,)


def test_show_probe_leaves_the_callers_memory_policy_alone(monkeypatch):
    """``ray-numa show`` probes set_mempolicy; memory policy is per thread, so the
    probe runs in a throwaway thread and the caller keeps its own policy."""
    from ray_numa.report import mempolicy_permitted
    monkeypatch.delenv("RAY_NUMA_FIXTURE", raising=False)
    seen = {}

    def caller():
        try:
            syscalls.set_mempolicy("preferred", [0])
        except OSError as exc:
            seen["skip"] = str(exc)
            return
        seen["answer"] = mempolicy_permitted(0)
        seen["after"] = syscalls.get_mempolicy()

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join()
    if "skip" in seen:
        pytest.skip(f"this kernel refuses set_mempolicy: {seen['skip']}")
    assert seen["answer"] == "yes"
    assert seen["after"] == ("preferred", (0,))
