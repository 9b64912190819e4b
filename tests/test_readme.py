"""Every shell command in the README is run by a test, or says why it cannot run here.

The README's fenced ``bash`` blocks are split into commands (lines, and the parts of a
line joined by ``&&``). Each command must match exactly one rule below: run here (with
this interpreter for ``python3`` and this checkout's ``ray-numa``), run by a named test of
``tests/test_examples.py`` (the Ray examples, which start clusters), or not runnable here,
with the reason. A command no rule knows fails the test, so a new README command needs a
rule. ``pip install`` runs with ``--dry-run``: it checks that the requirement resolves
without changing the environment the tests run in.
"""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE_TESTS = (ROOT / "tests" / "test_examples.py").read_text()
CI = (ROOT / ".ci" / "run").read_text()

RUN, PIP, EXAMPLE, SKIP = "run", "pip --dry-run", "example test", "skip"
# (pattern of the whole command, kind, detail, what its output must hold)
RULES = [
    (r'python3 -m pip install -q -e (\.|"\.\[test\]")', PIP, "", ""),
    (r"python3 -m pytest -q -p no:cacheprovider", SKIP,
     "the test suite itself, which .ci/run runs exactly as written", None),
    (r"python3 examples/actor_auto\.py", EXAMPLE,
     'run("actor_auto.py")', None),
    (r"python3 examples/actor_auto\.py --fixture dgx-h100", EXAMPLE,
     'run("actor_auto.py", "--fixture", "dgx-h100")', None),
    (r"python3 examples/job_submit\.py --fixture dgx-h100", EXAMPLE,
     '"job_submit.py", "--fixture", "dgx-h100"', None),
    (r"python3 examples/torchrun_launcher\.py --fixture dgx-h100", RUN, "",
     "rank 1 (cuda:1 = GPU ['1']): bound"),
    (r"ray-numa env", RUN, "", "export RAY_RUNTIME_ENV_PLUGINS="),
    (r"ray-numa show", RUN, "", "NUMA node"),
    (r"ray-numa audit --help", RUN, "", "--min-local"),
    (r'eval "\$\(ray-numa env\)"', RUN, "", ""),
    (r"ray start --head", SKIP, "starts a Ray head that outlives the command (it "
     "daemonizes, and `ray stop` would stop every Ray of this user); "
     "examples/job_submit.py starts one of its own and is run by tests/test_examples.py",
     None),
    (r"ray job submit .*", SKIP, "needs that running head; examples/job_submit.py "
     "submits the same runtime_env and is run by tests/test_examples.py", None),
    (r"torchrun .*", SKIP, "needs torch's torchrun and GPUs; "
     "examples/torchrun_launcher.py plays torchrun's ranks and runs here", None),
    (r"srun .*", SKIP, "needs a Slurm cluster", None),
    (r"kubectl apply .*", SKIP, "needs a Kubernetes cluster with KubeRay; "
     "tests/test_deploy_configs.py checks the manifest", None),
]


def readme_commands():
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split(" && ")]
    return commands


def rule_for(command):
    matches = [r for r in RULES if re.fullmatch(r[0], command)]
    assert len(matches) == 1, f"README command {command!r} matches {len(matches)} rules"
    return matches[0]


def test_every_readme_command_has_exactly_one_rule():
    commands = readme_commands()
    assert len(commands) >= 12, commands
    for command in commands:
        rule_for(command)


def shell(command):
    """``command`` as this checkout and interpreter run it."""
    exe = shlex.quote(sys.executable)
    command = re.sub(r"^python3 ", exe + " ", command)
    command = command.replace("ray-numa ", f"{exe} -m ray_numa.cli ")
    return command


@pytest.mark.parametrize("command", sorted(set(readme_commands())))
def test_readme_command(command):
    pattern, kind, detail, expect = rule_for(command)
    if kind == SKIP:
        if command.startswith("python3 -m pytest"):
            assert command in CI   # the line .ci/run runs
        pytest.skip(detail)
    if kind == EXAMPLE:
        assert detail in EXAMPLE_TESTS, f"no test in tests/test_examples.py runs {detail}"
        pytest.skip(f"run by tests/test_examples.py ({detail}): it starts a Ray cluster")
    if kind == PIP:
        if "[test]" in command:
            assert command in CI, f"{command!r} is not what .ci/run installs with"
        command = command.replace("pip install", "pip install --dry-run")
    proc = subprocess.run(["bash", "-c", shell(command)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
    assert expect in proc.stdout, (command, proc.stdout[-2000:])
