"""Following the CUDA device a process selects (ray_numa.follow + Binder.follow).

Each test runs a child process: the import hook and the binding are per process.
Torch is the stand-in of ``tests/standins/torchlib`` (torch 2.13.0's selection API
and its ``torch._C`` calls), or the real torch where one is installed. Machines come
from fixture trees; the real-kernel test binds this machine's CPUs for real.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.procs import PRELUDE, ROOT, child_report, run_child

TORCHLIB = str(ROOT / "tests" / "standins" / "torchlib")
NODE_CPUS = {0: "0-55,112-167", 1: "56-111,168-223"}     # DGX H100


def calls_for(node: int):
    return [["sched_setaffinity", "all-threads", NODE_CPUS[node]],
            ["set_mempolicy", "bind", str(node)],
            ["mbind_move", str(1 - node), str(node)]]


@pytest.fixture
def dgx(machine_tree):
    return {"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100"))}


def with_torch(code: str) -> str:
    """``code`` with the torch stand-in first on the path."""
    return f"import sys; sys.path.insert(0, {TORCHLIB!r})\n" + textwrap.dedent(code)


def test_hook_costs_nothing_until_torch_is_imported(dgx):
    r = child_report(with_torch('''
        import sys
        from ray_numa import bind_current_process, follow
        b = bind_current_process(2)
        hooked = follow._hook in sys.meta_path
        import email.mime.text, xml.dom.minidom     # other imports pass straight through
        report(hooked=hooked, torch="torch" in sys.modules,
               answer=follow._hook.find_spec("email.parser"))
    '''), env=dgx)
    assert r["hooked"] and not r["torch"] and r["answer"] is None


# (how the process selects GPU 6, in torch's public API)
SELECTIONS = {
    "cuda.set_device(int)": "torch.cuda.set_device(6)",
    "cuda.set_device(str)": "torch.cuda.set_device('cuda:6')",
    "cuda.set_device(device)": "torch.cuda.set_device(torch.device('cuda', 6))",
    "accelerator.set_device_index(int)": "torch.accelerator.set_device_index(6)",
    "accelerator.set_device_index(device)":
        "torch.accelerator.set_device_index(torch.device('cuda:6'))",
    "accelerator.set_device_idx (deprecated)": "torch.accelerator.set_device_idx(6)",
    "with cuda.device": "with torch.cuda.device(6): pass",
    "with accelerator.device_index": "with torch.accelerator.device_index(6): pass",
}


@pytest.mark.parametrize("call", list(SELECTIONS.values()), ids=list(SELECTIONS))
def test_selecting_a_device_on_another_node_rebinds_once(dgx, call):
    proc = run_child(with_torch(f'''
        from ray_numa import bind_current_process, current_binding
        import torch
        bind_current_process(2)                  # GPU 2: node 0
        {call}
        {call}                                   # again: nothing more
        torch.cuda.set_device(-1)                # torch: negative is a no-op
        report(binding=current_binding().as_dict())
    '''), env=dgx)
    b = json.loads(proc.stdout.strip().splitlines()[-1])["binding"]
    assert b["status"] == "bound" and b["gpus"] == ["6"]
    assert b["gpu_rule"] == "followed device" and b["cpus"] == NODE_CPUS[1]
    assert b["mem_nodes"] == [1] and b["memory"] == "bind"
    assert [h["gpus"] for h in b["history"]] == [["2"]]
    assert b["history"][0]["gpu_rule"] == "device index" and b["history"][0]["history"] == []
    assert [list(c) for c in b["calls"]] == calls_for(0) + calls_for(1)
    rebinds = [line for line in proc.stderr.splitlines() if "rebound" in line]
    assert len(rebinds) == 1 and "INFO" in rebinds[0]
    assert "from GPU 2 to GPU 6" in rebinds[0] and "followed device" in rebinds[0]


def test_same_gpu_or_same_node_makes_no_syscall(dgx):
    r = child_report(with_torch('''
        from ray_numa import bind_current_process, current_binding
        import torch
        bind_current_process(2)
        torch.cuda.set_device(2)
        same_gpu = current_binding().as_dict()
        with torch.cuda.device(3):               # another GPU of node 0
            pass
        report(same_gpu=same_gpu, same_node=current_binding().as_dict())
    '''), env=dgx)
    assert r["same_gpu"]["gpu_rule"] == "device index" and r["same_gpu"]["history"] == []
    node = r["same_node"]
    assert node["gpus"] == ["2", "3"] and node["gpu_rule"] == "followed device"
    assert [h["gpus"] for h in node["history"]] == [["2"]]
    assert [list(c) for c in node["calls"]] == calls_for(0)      # no rebind


def test_index_maps_through_the_current_cuda_visible_devices(dgx):
    # vLLM <= 0.23: CUDA_VISIBLE_DEVICES is rewritten after start, then cuda:<rank>
    r = child_report(with_torch('''
        from ray_numa import bind_current_process, current_binding
        b = bind_current_process(0)              # CUDA_VISIBLE_DEVICES=2 -> GPU 2
        os.environ["CUDA_VISIBLE_DEVICES"] = "1,2,5,6"
        import torch
        torch.cuda.set_device(2)                 # cuda:2 is now GPU 5
        report(first=b.as_dict(), binding=current_binding().as_dict())
    '''), env=dict(dgx, CUDA_VISIBLE_DEVICES="2"))
    assert r["first"]["gpus"] == ["2"] and r["first"]["cpus"] == NODE_CPUS[0]
    assert r["binding"]["gpus"] == ["5"] and r["binding"]["cpus"] == NODE_CPUS[1]


@pytest.mark.parametrize("span,cpus", [("union", "0-223"), ("first", NODE_CPUS[0])])
def test_several_selected_devices_bind_as_span_says(dgx, span, cpus):
    r = child_report(with_torch(f'''
        from ray_numa import bind_current_process, current_binding
        import torch
        bind_current_process(4, options={{"span": "{span}"}})     # node 1
        torch.cuda.set_device(2)
        with torch.cuda.device(6):
            pass
        report(binding=current_binding().as_dict())
    '''), env=dgx)
    assert r["binding"]["cpus"] == cpus and r["binding"]["gpus"] == ["2", "6"]


def test_a_device_torch_rejects_changes_nothing(dgx):
    proc = run_child(with_torch('''
        from ray_numa import bind_current_process, current_binding
        import torch
        bind_current_process(2)
        try:
            torch.cuda.set_device(9)             # the DGX has 8
        except RuntimeError as exc:
            print("torch:", exc, file=sys.stderr)
        report(binding=current_binding().as_dict())
    '''.replace("import torch", "import sys, torch")), env=dgx)
    b = json.loads(proc.stdout.strip().splitlines()[-1])["binding"]
    assert "invalid device ordinal" in proc.stderr
    assert b["gpus"] == ["2"] and b["history"] == []


def test_explicit_node_is_never_followed(dgx):
    r = child_report(with_torch('''
        from ray_numa import bind_current_process, current_binding
        bind_current_process(node=0)
        import torch
        torch.cuda.set_device(6)
        report(binding=current_binding().as_dict())
    '''), env=dgx)
    assert r["binding"]["cpu_nodes"] == [0] and r["binding"]["history"] == []


def test_one_node_machine_says_so_once_not_per_selection(tmp_path):
    from tests.fixtures import nvml_only
    env = {"RAY_NUMA_FIXTURE": str(nvml_only.write(tmp_path))}   # this kernel: 1 node
    proc = run_child(with_torch('''
        from ray_numa import bind_current_process, current_binding
        import torch
        bind_current_process(0)
        torch.cuda.set_device(1)
        with torch.accelerator.device_index(0):
            pass
        report(binding=current_binding().as_dict())
    '''), env=dict(env, TORCH_STANDIN_DEVICES="3"))
    b = json.loads(proc.stdout.strip().splitlines()[-1])["binding"]
    assert b["status"] == "skipped" and "single NUMA node" in b["reason"]
    # nothing to bind is said (INFO), not warned, and once, not per selection
    assert len([line for line in proc.stderr.splitlines() if "single NUMA" in line]) == 1
    assert "WARNING" not in proc.stderr


@pytest.mark.skipif(shutil.which("numactl") is None, reason="inspect uses numactl")
def test_rebind_on_the_real_kernel_moves_every_thread(machine_tree):
    """This machine's two CPUs as two nodes (fixture sysfs/NVML), real syscalls."""
    env = {"RAY_NUMA_FIXTURE": str(machine_tree("two-node-small"))}
    r = child_report(with_torch('''
        from ray_numa import bind_current_process, current_binding
        from ray_numa.apply import SyscallBackend
        from ray_numa.binding import process_binder
        process_binder().backend = SyscallBackend()   # the fixture's CPUs exist here
        stop = threading.Event()
        before = [threading.Thread(target=stop.wait) for _ in range(2)]
        [t.start() for t in before]
        first = bind_current_process(0, options={"memory": "none"})
        first_cpus = thread_cpus()
        between = threading.Thread(target=stop.wait); between.start()
        import torch
        torch.accelerator.set_device_index(1)    # GPU 1: node 1 = CPU 1
        after = threading.Thread(target=stop.wait); after.start()
        report(first=first.as_dict(), first_cpus=first_cpus,
               threads=len(os.listdir("/proc/self/task")))
        stop.set()
    '''), env=env)
    assert r["first"]["cpus"] == "0" and r["first_cpus"] == ["0"]
    assert r["threads"] >= 5
    assert r["affinity"] == [1] and r["thread_cpus"] == ["1"]    # every thread
    b = r["binding"]
    assert b["backend"] == "syscall" and b["gpus"] == ["1"] and b["cpus"] == "1"
    assert b["gpu_rule"] == "followed device" and b["history"][0]["cpus"] == "0"


def _real_torch_python():
    """An interpreter with the real torch: this one, or the one RAY_NUMA_TORCH_PYTHON
    names (``.ci/run`` makes one where a CPU build of torch is at hand)."""
    for python in (sys.executable, os.environ.get("RAY_NUMA_TORCH_PYTHON", "")):
        if python and Path(python).exists() and subprocess.run(
                [python, "-c", "import torch"], capture_output=True,
                env=dict(os.environ, PYTHONPATH="")).returncode == 0:
            return python
    return None


REAL_TORCH = _real_torch_python()


@pytest.mark.skipif(REAL_TORCH is None, reason="the real torch is not installed")
def test_real_torch_public_api_is_followed(machine_tree):
    """The real torch's Python API, hooked on its real import (RAY_NUMA_TORCH_PYTHON
    names an interpreter that has it). Only the ``torch._C`` calls at the bottom are
    supplied: a CPU build lacks them, and the fixture's 8 GPUs are not the host's."""
    env = {"RAY_NUMA_FIXTURE": str(machine_tree("dgx-h100")), "PYTHONPATH": str(ROOT)}
    code = textwrap.dedent('''
        from ray_numa import bind_current_process, current_binding
        bind_current_process(2)
        import torch
        assert not getattr(torch, "STANDIN", False), torch.__file__
        wrapped = {n: getattr(f, "_ray_numa_follows", False) for n, f in [
            ("cuda.set_device", torch.cuda.set_device),
            ("cuda.device", torch.cuda.device.__enter__),
            ("cuda.device_of", torch.cuda.device_of.__enter__),
            ("accelerator.set_device_index", torch.accelerator.set_device_index),
            ("accelerator.set_device_idx", torch.accelerator.set_device_idx),
            ("accelerator.device_index", torch.accelerator.device_index.__enter__)]}
        # the C calls a CUDA build has (a CPU build lacks them)
        current = [0]
        def exchange(i):
            prev, current[0] = current[0], (i if i >= 0 else current[0])
            return prev
        torch._C._cuda_setDevice = lambda i: exchange(i) and None
        torch.cuda._exchange_device = torch.cuda._maybe_exchange_device = exchange
        torch._C._accelerator_getAccelerator = lambda: torch.device("cuda")
        torch._C._accelerator_setDeviceIndex = lambda i: exchange(i) and None
        torch._C._accelerator_exchangeDevice = exchange
        torch._C._accelerator_maybeExchangeDevice = exchange
        seen = []
        for select in (lambda: torch.cuda.set_device("cuda:3"),
                       lambda: torch.accelerator.set_device_index(torch.device("cuda:6")),
                       lambda: torch.cuda.device(5).__enter__(),
                       lambda: torch.accelerator.device_index(7).__enter__()):
            select()
            seen.append(current_binding().as_dict()["gpus"])
        report(wrapped=wrapped, seen=seen, version=torch.__version__)
    ''')
    proc = subprocess.run([REAL_TORCH, "-c", PRELUDE + code], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(r["wrapped"].values()), r["wrapped"]
    # union of the devices selected since the bind: 3, then 3+6, 3+6+5, 3+6+5+7
    assert r["seen"] == [["3"], ["3", "6"], ["3", "6", "5"], ["3", "6", "5", "7"]]
    assert r["binding"]["cpus"] == "0-223" and r["binding"]["gpu_rule"] == "followed device"


def test_torch_before_2_8_has_no_device_index_and_set_device_index_is_still_followed():
    # torch 2.6/2.7's torch.accelerator: set_device_index and set_device_idx, but the
    # device_index context manager only came in 2.8 (pytorch docs, torch.accelerator)
    import types
    from ray_numa import follow
    accelerator = types.ModuleType("torch.accelerator")
    accelerator.current_accelerator = lambda check_available=False: None
    accelerator._get_device_index = lambda device, optional=False: int(device)
    accelerator.set_device_index = lambda device: None
    accelerator.set_device_idx = accelerator.set_device_index
    follow.patch_accelerator(accelerator)          # no AttributeError, no warning
    assert getattr(accelerator.set_device_index, "_ray_numa_follows", False)
    assert getattr(accelerator.set_device_idx, "_ray_numa_follows", False)
    assert not hasattr(accelerator, "device_index")


def test_follow_on_another_thread_is_recorded_per_thread_until_main_catches_up(dgx):
    """Issue 21.5: set_mempolicy(2) sets the calling thread's policy only, so a follow
    on an event-loop or pool thread leaves main (and the threads it starts) on the old
    node; the record says so, and main takes the new policy at its next task start
    (``worker.catch_up``, run from Ray's task-start hook)."""
    r = child_report(with_torch('''
        from ray_numa import bind_current_process, current_binding, worker
        import torch
        bind_current_process(2)                  # node 0, on main
        follower = []
        def select():
            torch.cuda.set_device(6)             # node 1, on this thread only
            follower.append(threading.get_native_id())
        t = threading.Thread(target=select)
        t.start(); t.join()
        lagging = current_binding().as_dict()
        worker.catch_up()                        # main's next task start
        worker.catch_up()                        # and the one after: nothing more
        report(lagging=lagging, follower=follower[0],
               main=threading.main_thread().native_id,
               binding=current_binding().as_dict())
    '''), env=dgx)
    lagging, b = r["lagging"], r["binding"]
    assert lagging["mem_nodes"] == [1] and lagging["cpus"] == NODE_CPUS[1]
    assert sorted((t["tid"], t["main"], t["memory"], t["nodes"])
                  for t in lagging["thread_policies"]) == sorted(
        [(r["main"], True, "bind", [0]), (r["follower"], False, "bind", [1])])
    assert b["thread_policies"] == []            # the follower has exited, main caught up
    assert [list(c) for c in b["calls"]] == calls_for(0) + calls_for(1) + [
        ["set_mempolicy", "bind", "1"]]


def test_threads_that_agree_leave_no_thread_record(dgx):
    r = child_report(with_torch('''
        from ray_numa import bind_current_process, current_binding, worker
        import torch
        bind_current_process(2)
        torch.cuda.set_device(6)                 # on main: every later thread inherits
        worker.catch_up()
        report(binding=current_binding().as_dict())
    '''), env=dgx)
    assert r["binding"]["thread_policies"] == [] and r["binding"]["mem_nodes"] == [1]
    assert [list(c) for c in r["binding"]["calls"]] == calls_for(0) + calls_for(1)


def test_a_thread_ray_numa_never_set_is_listed_as_such(dgx):
    """A thread that runs no Ray task hook (another concurrency group's event loop,
    Serve's user-code thread) never catches up: while the threads disagree the record
    lists it too, as not set by ray-numa, not leaves it out."""
    r = child_report(with_torch('''
        from ray_numa import bind_current_process, current_binding
        import torch
        bind_current_process(2)                  # node 0, on main
        stop = threading.Event()
        idle = threading.Thread(target=stop.wait)   # e.g. a concurrency group's loop
        idle.start()
        def select():
            torch.cuda.set_device(6)             # node 1, on this thread only
        t = threading.Thread(target=select)
        t.start(); t.join()
        lagging = current_binding().as_dict()
        stop.set(); idle.join()
        report(lagging=lagging, idle=idle.native_id)
    '''), env=dgx)
    listed = {t["tid"]: (t["memory"], t["nodes"]) for t in r["lagging"]["thread_policies"]}
    assert listed[r["idle"]] == ("not set by ray-numa", [])
