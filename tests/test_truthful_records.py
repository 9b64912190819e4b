"""Records and messages that say what really happened (issue 21 item 7)."""
from ray_numa.options import parse
from ray_numa.planning import plan_for
from ray_numa.policy import Skip
from tests.test_cli_launcher import ray_numa


def test_amd_gpus_are_named_and_only_nvidia_is_bound(on_machine, monkeypatch):
    """On a machine with AMD Instinct GPUs (vendor 0x1002, no NVML), Ray assigns GPU
    ids; the skip says ray-numa binds NVIDIA GPUs only, not "fake num_gpus"."""
    from ray_numa.launcher import bind_current_process
    on_machine("amd-mi300x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    skip = plan_for(parse("auto"), ["0"])
    assert isinstance(skip, Skip)
    assert "ray-numa binds NVIDIA GPUs only" in skip.reason
    assert "AMD 0000:18:00.0" in skip.reason and "AMD 0000:db:00.0" in skip.reason
    assert "num_gpus" not in skip.reason
    b = bind_current_process()
    assert b.status == "skipped" and b.reason == skip.reason


def test_exec_near_a_gpu_on_a_single_node_machine_runs_the_command(machine_tree):
    """One NUMA node: nothing to bind, which is not failing ``--gpu 0``: the
    command runs and its exit status is exec's, as with ``--node 0``."""
    env = {"RAY_NUMA_FIXTURE": str(machine_tree("workstation"))}
    for how in (["--gpu", "0"], ["--node", "0"], []):
        proc = ray_numa("exec", *how, "--", "sh", "-c", "exit 3", env=env, check=False)
        assert proc.returncode == 3, (how, proc.stderr)
    gpu = ray_numa("exec", "--gpu", "0", "--", "true", env=env)
    assert "not binding: this machine has a single NUMA node" in gpu.stderr
    assert "strict" not in gpu.stderr
