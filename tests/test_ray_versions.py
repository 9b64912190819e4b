"""ray-numa on a Ray without one of the private hooks it uses (another release).

Each case removes the hook in a child process, as an older or newer Ray would lack
it, and checks the one clear message: which hook, which Ray, what is lost, and the
supported versions; the worker or driver carries on.
"""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import ray

from tests.procs import run_child

REPO = Path(__file__).resolve().parent.parent


def test_a_missing_ray_hook_is_named_with_the_ray_version():
    import ray
    from tests.procs import run_child
    proc = run_child('''
        import ray._private.utils as u, ray._private.worker as w
        del u.set_visible_accelerator_ids, w.Worker.record_task_log_start   # "another Ray"
        from ray_numa import worker
        worker.install()
        worker.hook_ray(w)
        worker.log_ready()
    ''', env={"RAY_NUMA_SPEC": '{"node": "auto"}'})
    for hook in ("ray._private.utils.set_visible_accelerator_ids",
                 "ray._private.worker.Worker.record_task_log_start"):
        assert f"Ray {ray.__version__} has no {hook}" in proc.stderr, proc.stderr
    assert proc.stderr.count("ray-numa is tested with Ray 2.48 to 2.60") == 2


def test_driver_validation_without_runtime_env_validate_flag_warns_and_skips():
    proc = run_child('''
        from ray.runtime_env import RuntimeEnv
        original = RuntimeEnv.__init__
        def __init__(self, py_modules=None, **kwargs):      # no _validate: "another Ray"
            original(self, py_modules=py_modules, **kwargs)
        RuntimeEnv.__init__ = __init__
        import ray_numa
        ray_numa.register()
        env = RuntimeEnv(numa_bind="auto")                  # still constructible
        print(RuntimeEnv.__init__ is __init__, dict(env))
    ''')
    assert proc.stdout.strip().splitlines()[-1] == "True {'numa_bind': 'auto'}"
    assert (f"Ray {ray.__version__} has no RuntimeEnv.__init__(_validate=...)"
            in proc.stderr), proc.stderr
    assert "ray-numa is tested with Ray 2.48 to 2.60" in proc.stderr


def test_the_tested_ray_range_is_the_two_releases_ci_runs():
    """The oldest Ray .ci/run tests (its second pass) is pyproject's lower bound and
    environment.OLDEST_RAY; the main pass upgrades to the newest on the index."""
    from ray_numa import environment
    ci = (REPO / ".ci" / "run").read_text()
    oldest = re.search(r"^OLDEST_RAY=(\d+)\.(\d+)\.\d+$", ci, re.M)
    assert oldest, "no OLDEST_RAY=X.Y.Z in .ci/run"
    assert (int(oldest[1]), int(oldest[2])) == environment.OLDEST_RAY
    low = f"{oldest[1]}.{oldest[2]}"
    assert '"$venv/bin/python" -m pip install -q "ray[default,serve]==$OLDEST_RAY"' in ci
    assert 'python3 -m pip install -q --upgrade "ray[default,serve]"' in ci
    assert environment.SUPPORTED_RAY == f"{low} to 2.60"
    readme = (REPO / "README.md").read_text()
    assert f"Ray {low} or newer (`ray>={low}`), tested with {low} to 2.60" in readme


def test_pyproject_puts_no_upper_bound_on_ray():
    """Every ray requirement, extras included: a newer Ray is kept, not downgraded."""
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = re.findall(r'"ray(?:\[\w+\])?([<>=!~][^"]*)"', pyproject)
    assert len(pins) == 4 and set(pins) == {">=2.48"}, pins


def test_the_built_wheel_requires_ray_without_an_upper_bound(tmp_path):
    """What `pip install ray-numa` reads: the Requires-Dist of the wheel pip builds
    (PEP 517, pyproject's build backend, in pip's isolated build environment)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "ray_numa", src / "ray_numa",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("ray_numa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        text = z.read(meta).decode()
    ray_reqs = [line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("Requires-Dist: ray")]
    assert ray_reqs and all(re.match(r"ray(\[\w+\])?\s*>=\s*2\.48\b(?![^;]*<)", r)
                            for r in ray_reqs), ray_reqs
    assert len(ray_reqs) == 4, ray_reqs      # the dependency and the three extras


@pytest.mark.parametrize("version,untested", [
    ("2.48.0", False), ("2.60.0", False), ("2.60.3", False), ("2.61.0", True),
    ("2.61.0rc1", True), ("3.0.0.dev0", True), ("(unknown version)", False)])
def test_which_ray_is_untested(version, untested):
    from ray_numa import environment
    note = environment.untested_ray(version)
    assert (note is not None) == untested
    if untested:
        assert f"Ray {version} is newer than" in note and "(2.48 to 2.60)" in note


def test_a_newer_ray_is_named_once_on_the_driver_and_in_the_agent():
    """register(), `ray-numa env` (plugin_env) and the runtime-env agent's plugin say it
    once per process; the worker bootstrap never checks (its start is a hot path)."""
    proc = run_child('''
        import ray._version
        ray._version.version = "2.61.0"                     # "the next release"
        import ray_numa
        from ray_numa.plugin import NumaBindPlugin
        ray_numa.register({})
        ray_numa.register({})
        ray_numa.plugin_env()
        NumaBindPlugin()
    ''')
    note = ("[ray_numa] WARNING Ray 2.61.0 is newer than the Ray releases ray-numa is "
            "tested with (2.48 to 2.60)")
    assert proc.stderr.count(note) == 1, proc.stderr
    same = run_child('''
        import ray_numa
        ray_numa.register({})
    ''')
    assert "is newer than" not in same.stderr, same.stderr


def test_ci_runs_no_ray_newer_than_the_newest_tested():
    """NEWEST_TESTED_RAY is written by hand, while .ci/run's main pass upgrades to the
    newest Ray on the package index and says so with RAY_NUMA_CI_NEWEST=1: when Ray
    ships a release past it, CI fails here instead of passing while every user is
    told their Ray is untested and the README names the old range."""
    import os
    from ray_numa import environment
    if os.environ.get("RAY_NUMA_CI_NEWEST") != "1":
        pytest.skip("only .ci/run's main pass (RAY_NUMA_CI_NEWEST=1) runs the newest Ray")
    note = environment.untested_ray(environment.ray_version())
    assert note is None, (f"{note}: CI passes on this Ray, so bump NEWEST_TESTED_RAY and "
                          "the README's supported versions")
