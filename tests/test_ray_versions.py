"""ray-numa on a Ray without one of the private hooks it uses (another release).

Each case removes the hook in a child process, as an older or newer Ray would lack
it, and checks the one clear message: which hook, which Ray, what is lost, and the
supported versions; the worker or driver carries on.
"""
import re
from pathlib import Path

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
    assert proc.stderr.count("ray-numa supports Ray 2.48 to 2.60") == 2


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
    assert "ray-numa supports Ray 2.48 to 2.60" in proc.stderr


def test_the_supported_ray_range_is_the_two_releases_ci_runs():
    """pyproject's range, the message above and the README name exactly the Ray
    releases .ci/run tests: the oldest in its second pass, 2.60 in the main one."""
    from ray_numa import environment
    ci = (REPO / ".ci" / "run").read_text()
    oldest = re.search(r"^OLDEST_RAY=(\d+)\.(\d+)\.\d+$", ci, re.M)
    assert oldest, "no OLDEST_RAY=X.Y.Z in .ci/run"
    low = f"{oldest[1]}.{oldest[2]}"
    assert '"$venv/bin/python" -m pip install -q "ray[default,serve]==$OLDEST_RAY"' in ci
    pyproject = (REPO / "pyproject.toml").read_text()
    ranges = re.findall(r'"ray(?:\[\w+\])?(>=[\d.]+,<[\d.]+)"', pyproject)
    assert len(ranges) == 4 and set(ranges) == {f">={low},<2.61"}, ranges
    assert environment.SUPPORTED_RAY == f"{low} to 2.60"
    readme = (REPO / "README.md").read_text()
    assert f"Ray {low} to 2.60 (`ray>={low},<2.61`" in readme
