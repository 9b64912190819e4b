"""Every shell command in the README is run by a test, or says why it cannot run here.

The README's fenced ``bash`` blocks are split into commands (lines, and the parts of a
line joined by ``&&``). Each command must match exactly one rule below: run here (with
this interpreter for ``python3`` and this checkout's ``ray-numa``), run by a named test of
``tests/test_examples.py`` (the Ray examples, which start clusters), or not runnable here,
with the reason. A command no rule knows fails the test, so a new README command needs a
rule. ``pip install`` runs with ``--dry-run``: it checks that the requirement resolves
without changing the environment the tests run in.

A command that cannot run here is still parsed where its parser is at hand: every
``ray-numa ...`` in a command, also one wrapped by ``torchrun``, ``srun``, ``ray job
submit`` or ``$(...)``, by ray-numa's own parser (``ray_numa.cli.parser()``), and ``ray
job submit``'s options by Ray's own click command, with its ``numa_bind`` by
``ray_numa.options.parse``. Shell or Python in a fence other than ``bash`` would escape
all of this, so such a fence fails the test.
"""
import json
import os
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
    # eval's exports are checked in the shell that ran it (see ``shell``)
    (r'eval "\$\(ray-numa env\)"', RUN, "", "RAY_RUNTIME_ENV_PLUGINS=[{\"class\": "
     "\"ray_numa.plugin.NumaBindPlugin\""),
    (r"ray start --head", SKIP, "starts a Ray head that outlives the command (it "
     "daemonizes, and `ray stop` would stop every Ray of this user); "
     "examples/job_submit.py starts one of its own and is run by tests/test_examples.py",
     None),
    (r"ray job submit .* -- python my_job\.py", SKIP, "needs that running head; "
     "examples/job_submit.py submits the same runtime_env and is run by "
     "tests/test_examples.py", None),
    (r"ray job submit .* -- vllm serve .*", SKIP, "needs that running head, vLLM, GPUs "
     "and RDMA NICs; tests/test_ray_nic.py checks a Ray worker's NIC variables", None),
    (r"torchrun .*", SKIP, "needs torch's torchrun and GPUs; "
     "examples/torchrun_launcher.py plays torchrun's ranks and runs here", None),
    (r"srun .*", SKIP, "needs a Slurm cluster", None),
    (r"kubectl apply .*", SKIP, "needs a Kubernetes cluster with KubeRay; "
     "tests/test_deploy_configs.py checks the manifest", None),
]


def readme_commands():
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
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


def test_no_commands_outside_bash_fences():
    """Only ``bash`` fences are run or parsed, so a command in another fence (or an
    unlabelled one) would go unchecked."""
    fences = re.findall(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)
    assert len(fences) > 5, fences
    for lang, body in fences:
        if lang != "bash":
            assert "ray-numa" not in body and "python3" not in body, (lang, body)


def cli_calls(command):
    """The argv of every ``ray-numa`` the command runs: itself, wrapped (``torchrun
    ... ray-numa exec -- ...``) or in a ``$(...)``."""
    calls = [shlex.split(inner) for inner in re.findall(r"\$\((ray-numa [^)]*)\)", command)]
    words = shlex.split(re.sub(r"\$\([^)]*\)", "", command))
    if "ray-numa" in words:
        calls.append(words[words.index("ray-numa"):])
    return [call[1:] for call in calls]


def test_every_ray_numa_call_parses():
    """ray-numa's own parser accepts every ``ray-numa`` invocation, wrapped ones too."""
    from ray_numa.cli import parser
    calls = [(command, argv) for command in readme_commands() for argv in cli_calls(command)]
    wrapped = [c for c, _ in calls if not c.startswith(("ray-numa", "eval"))]
    assert len(wrapped) >= 2, calls          # torchrun and srun
    for command, argv in calls:
        try:
            parser().parse_args(argv)
        except SystemExit as exc:           # argparse's way to reject (2) or --help (0)
            assert exc.code == 0, f"ray-numa's parser rejects {argv} in {command!r}"


def test_ray_job_submit_commands_parse():
    """Ray's own ``ray job submit`` command accepts each README one's options, and its
    runtime_env's ``numa_bind`` is one ray-numa accepts."""
    from ray.dashboard.modules.job.cli import submit   # ray[default], in [test]
    from ray_numa.options import parse
    commands = [c for c in readme_commands() if c.startswith("ray job submit ")]
    assert len(commands) >= 2, commands
    for command in commands:
        ctx = submit.make_context("submit", shlex.split(command)[3:])   # click: raises
        parse(json.loads(ctx.params["runtime_env_json"])["numa_bind"])
        assert ctx.params["entrypoint"], command


def shell(command):
    """``command`` as this checkout and interpreter run it; an ``eval`` of exports
    prints what it exported."""
    exe = shlex.quote(sys.executable)
    command = re.sub(r"^python3 ", exe + " ", command)
    command = command.replace("ray-numa ", f"{exe} -m ray_numa.cli ")
    if command.startswith("eval "):
        command += " && env"
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
    # without the plugin's variables of a shell that ran `eval "$(ray-numa env)"` before
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_RUNTIME_ENV_PLUGIN")}
    proc = subprocess.run(["bash", "-c", shell(command)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
    assert expect in proc.stdout, (command, proc.stdout[-2000:])
