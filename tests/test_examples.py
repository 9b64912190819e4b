"""Every example runs on this GPU-less machine and says what it bound."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_numa.options import VALID_FORMS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=EXAMPLES, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.ray
def test_main_example_on_this_machine_runs_unbound_and_says_why():
    out = run("actor_auto.py")
    assert out.startswith("=== actor_auto.py: on this machine ===\n")
    assert out.count("skipped - GPU(s)") == 2 and "no NVIDIA GPU" in out
    # the whole message, not cut off
    assert VALID_FORMS[-80:] in out


@pytest.mark.ray
def test_main_example_on_a_dgx_fixture():
    out = run("actor_auto.py", "--fixture", "dgx-h100")
    assert out.startswith("=== actor_auto.py: on a dgx-h100 fixture machine (plans recorded, "
                          "not applied) ===\n")
    assert out.count("CPUs 0-55,112-167, memory bind [0]") == 4
    assert out.count("CPUs 56-111,168-223, memory bind [1]") == 4


@pytest.mark.ray
def test_vllm_example_binds_every_worker_and_not_the_engine():
    out = run("vllm_on_ray.py", "--fixture", "dgx-h100")
    assert out.count(": bound - GPU") == 8 and "CPU-only engine actor: skipped" in out


def test_torchrun_example_ranks_follow_remapped_devices():
    out = run("torchrun_launcher.py", "--fixture", "dgx-h100")
    assert "rank 0 (cuda:0 = GPU ['6']): bound" in out
    assert "rank 1 (cuda:1 = GPU ['1']): bound" in out


@pytest.mark.ray
def test_serve_example_replicas_bind():
    out = run("serve_deployment.py", "--fixture", "dgx-h100")
    assert out.count("bound - GPU") == 2


@pytest.mark.ray
@pytest.mark.parametrize("token", [False, True], ids=["no token", "~/.ray/auth_token"])
def test_job_submit_example_works_with_or_without_a_token(tmp_path, token):
    """Ray 2.60's `ray start` turns token authentication on when RAY_AUTH_MODE is unset
    and ~/.ray/auth_token exists; `ray job submit` then needs RAY_AUTH_MODE=token (else
    "Unauthorized: Missing authentication token"). The example works either way; on
    Ray 2.48, which has no token authentication, it is off in both cases."""
    import ray._raylet
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    if token:
        (home / ".ray" / "auth_token").write_text("0123456789abcdef0123456789abcdef")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    proc = subprocess.run([sys.executable, "job_submit.py", "--fixture", "dgx-h100"],
                          cwd=EXAMPLES, capture_output=True, text=True, timeout=600,
                          env=dict(env, HOME=str(home)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    has_token_auth = hasattr(ray._raylet, "AuthenticationTokenLoader")   # Ray 2.5x+
    assert f"token authentication: {'on' if token and has_token_auth else 'off'}" in proc.stdout
    assert proc.stdout.count(": bound - CPUs 0-55,112-167") == 4, proc.stdout
    assert proc.stdout.count(": bound - CPUs 56-111,168-223") == 4, proc.stdout
    temp = proc.stdout.split("Ray temp dir: ", 1)[1].split("\n", 1)[0]
    assert temp.rpartition("/")[2].startswith("rn-job-") and not os.path.exists(temp), \
        "a passing run removes the head's temp dir (~3 MB of logs each)"
