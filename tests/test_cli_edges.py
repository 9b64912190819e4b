"""The ``ray-numa`` CLI as a new user meets it: errors say what to do, no tracebacks."""
import json
import os
import shutil

from tests.test_cli_launcher import REPORT, ray_numa

CPUS = sorted(os.sched_getaffinity(0))


def test_an_explicit_node_that_cannot_be_honoured_is_an_error():
    proc = ray_numa("exec", "--node", "7", "--", "true", check=False)
    assert proc.returncode == 1
    assert "NUMA node 7 does not exist" in proc.stderr and "--best-effort" in proc.stderr
    assert ray_numa("exec", "--node", "7", "--best-effort", "--", "true").returncode == 0


def test_a_missing_command_is_a_message_not_a_traceback():
    proc = ray_numa("exec", "--node", "0", "--", "no-such-cmd-ray-numa", check=False)
    assert proc.returncode == 127
    assert "cannot run 'no-such-cmd-ray-numa': No such file or directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cpus_accepts_the_list_format_show_prints():
    listed = f"{CPUS[0]}-{CPUS[-1]}" if len(CPUS) > 1 else str(CPUS[0])
    r = json.loads(ray_numa("exec", "--node", "0", "--cpus", listed, "--", *REPORT)
                   .stdout.splitlines()[-1])
    assert r["affinity"] == CPUS


def test_no_gpu_is_said_in_cli_words(tmp_path):
    from tests.fixtures.build import build
    root = build("two-node-small", tmp_path / "no-gpu")   # then take its GPUs away
    (root / "nvml.json").unlink()
    shutil.rmtree(root / "sys/bus/pci/devices")
    env = {"RAY_NUMA_FIXTURE": str(root)}
    explicit = ray_numa("exec", "--gpu", "0", "--", "true", env=env, check=False)
    assert explicit.returncode == 1
    auto = ray_numa("exec", "--", "true", env=env)
    for proc in (explicit, auto):
        assert "this machine shows no NVIDIA GPU" in proc.stderr and "--node N" in proc.stderr
        assert "assigned" not in proc.stderr and "num_gpus" not in proc.stderr


def test_show_names_unset_cuda_variables():
    env = {k: v for k, v in os.environ.items()
           if k not in ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES")}
    import subprocess
    import sys
    from tests.procs import ROOT
    out = subprocess.run([sys.executable, "-m", "ray_numa.cli", "show"], capture_output=True,
                         text=True, env=dict(env, PYTHONPATH=str(ROOT)), timeout=120).stdout
    assert "CUDA_DEVICE_ORDER     (unset: CUDA's default, FASTEST_FIRST)" in out
    shown = ray_numa("show", env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).stdout
    assert "CUDA_DEVICE_ORDER     PCI_BUS_ID" in shown


def test_version_and_an_example_per_subcommand():
    from ray_numa import __version__
    assert ray_numa("--version").stdout.startswith(f"ray-numa {__version__} (Ray ")
    for sub in ("show", "exec", "env", "resources", "audit"):
        text = ray_numa(sub, "--help").stdout
        assert "example:\n  " in text and "ray-numa" in text.split("example:")[1], sub


def test_resources_labels_count_only_nodes_with_cpus_or_memory(machine_tree):
    labels = json.loads(ray_numa("resources", "--labels",
                                 env={"RAY_NUMA_FIXTURE": str(machine_tree("gb200"))}).stdout)
    from tests.fixtures.machines import MACHINES
    nodes = MACHINES["gb200"]["nodes"]
    real = [n for n, spec in nodes.items() if spec.get("cpus") or spec.get("mem_gb")]
    assert len(nodes) == 34 and labels["ray-numa.io/numa-nodes"] == str(len(real))


def test_a_cpu_list_mistake_is_an_error_that_quotes_it():
    """--cpus is parsed strictly, ids capped before a range is expanded (0-4294967295
    once tried to build a 4-billion-element set), and the error quotes what was typed."""
    cases = {"0-4294967295": "4294967295 is past the largest CPU id ray-numa accepts (65535)",
             "3-1": "the range '3-1' runs backwards (write 1-3)",
             "0-7:2/4": "'0-7:2/4' is not a CPU id or a range first-last"}
    for typed, why in cases.items():
        proc = ray_numa("exec", "--cpus", typed, "--", "true", check=False)
        assert proc.returncode != 0, typed
        assert f"--cpus {typed!r}: {why}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr
