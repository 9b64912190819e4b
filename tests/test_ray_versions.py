"""ray-numa on a Ray without one of the private hooks it uses (another release).

Each case removes the hook in a child process, as an older or newer Ray would lack
it, and checks the one clear message: which hook, which Ray, what is lost, and the
supported versions; the worker or driver carries on.
"""
import ray

from tests.procs import run_child


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
    assert proc.stderr.count("ray-numa supports Ray 2.60") == 2


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
    assert "ray-numa supports Ray 2.60" in proc.stderr
