"""The worker bootstrap the plugin puts before default_worker.py, run for real."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_numa.plugin import BOOT_SCRIPT


SCRIPT = ("names = sorted(globals())\n"
          "import json, os, sys\n"
          "import ray._private.worker   # default_worker.py's first import\n"
          "print(json.dumps({'argv': sys.argv, 'path': sys.path, 'name': __name__,"
          " 'globals': names, 'file': __file__, 'cached': __cached__, 'spec': __spec__,"
          " 'package': __package__, 'main': sys.modules['__main__'].__dict__ is globals(),"
          " 'loader': [type(__loader__).__name__, __loader__.name, __loader__.path],"
          " 'code': sys._getframe().f_code.co_filename,"
          " 'modules': sorted(sys.modules),"
          " 'boot_error': os.environ.get('RAY_NUMA_BOOT_ERROR')}))\n")


def boot(tmp_path, env=None, wrapped=True, write=True):
    script = tmp_path / "worker_main.py"
    if write:
        script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, *([BOOT_SCRIPT] if wrapped else []), str(script),
                           "--flag", "x y"],
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return script, json.loads(proc.stdout.splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("spec", [None, '{"node": "auto"}'])
def test_runs_the_worker_script_as_python_would(tmp_path, spec):
    """argv, sys.path, and the script's ``__main__`` namespace as ``python script``
    gives them; the only modules added are ray_numa's (not runpy's pkgutil, which
    ``runpy.run_path`` imports and a plain worker never loads), also for an "auto"
    worker with Ray's hooks wrapped (a CPU-only one stays so)."""
    env = {"RAY_NUMA_SPEC": spec} if spec else {}
    script, seen, _ = boot(tmp_path, env=env)
    _, direct, _ = boot(tmp_path, env=env, wrapped=False)
    added = set(seen.pop("modules")) - set(direct.pop("modules"))
    assert seen == direct
    assert seen["argv"] == [str(script), "--flag", "x y"] and seen["name"] == "__main__"
    assert seen["file"] == str(script) and seen["main"] and seen["loader"][2] == str(script)
    assert str(tmp_path) in seen["path"] and seen["boot_error"] is None
    assert added and all(m.split(".")[0] in ("ray_numa", "ray_numa_boot") for m in added), \
        sorted(added)


def test_a_relative_or_symlinked_script_gets_what_python_gives_it(tmp_path):
    """CPython makes a script's ``__file__`` (and its code's file name) absolute, keeps
    ``sys.argv[0]`` as given, and puts the script's directory with symlinks resolved
    first on ``sys.path`` (``_PyPathConfig_ComputeSysPath0`` in CPython's
    ``Python/pathconfig.c``: ``realpath`` of the script): the bootstrap does the same,
    checked against the real ``python script`` here."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "worker_main.py").write_text(SCRIPT)
    (tmp_path / "link").symlink_to(real / "worker_main.py")
    for name in ("real/worker_main.py", "link"):
        runs = [subprocess.run([sys.executable, *argv, name], capture_output=True, text=True,
                               cwd=tmp_path, timeout=60) for argv in ([BOOT_SCRIPT], [])]
        assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
        seen, direct = (json.loads(r.stdout.splitlines()[-1]) for r in runs)
        seen.pop("modules"), direct.pop("modules")
        assert seen == direct
        assert seen["argv"] == [name] and seen["file"] == str(tmp_path / name)
        assert str(real) in seen["path"] and str(tmp_path) not in seen["path"]
        assert seen["code"] == seen["file"]


def test_a_safe_path_python_starts_the_worker_with_the_path_python_gives(tmp_path):
    """``python -P`` / ``PYTHONSAFEPATH`` (3.11+) puts no script directory on
    ``sys.path``: the bootstrap still finds its module, and the worker's path is the
    one ``python -P default_worker.py`` has (it failed to start before)."""
    env = {"PYTHONSAFEPATH": "1"}
    _, seen, _ = boot(tmp_path, env=env)
    _, direct, _ = boot(tmp_path, env=env, wrapped=False)
    seen.pop("modules"), direct.pop("modules")
    assert seen == direct and seen["boot_error"] is None
    if sys.version_info >= (3, 11):
        assert str(tmp_path) not in seen["path"]


# Installed on the worker's interpreter (sitecustomize, before any script runs): lists
# the files compile() is asked to compile, in the file RAY_NUMA_TEST_COMPILED names.
AUDIT_COMPILES = ("import os, sys\n"
                  "def hook(event, args, out=os.environ['RAY_NUMA_TEST_COMPILED']):\n"
                  "    if event == 'compile' and args[1]:\n"
                  "        with open(out, 'a') as f:\n"
                  "            f.write(str(args[1]) + '\\n')\n"
                  "sys.addaudithook(hook)\n")


def test_the_worker_script_runs_from_its_valid_bytecode_not_compiled(tmp_path):
    """``default_worker.py``'s bytecode, written when Ray was installed, is what the
    bootstrap runs (``python default_worker.py`` compiles it in every worker, ~8 M
    instructions); bytecode that no longer matches the source is not used."""
    import py_compile
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AUDIT_COMPILES)
    compiled = tmp_path / "compiled"
    env = {"RAY_NUMA_TEST_COMPILED": str(compiled), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH"))
                                         if p)}
    script = tmp_path / "worker_main.py"
    script.write_text(SCRIPT)
    py_compile.compile(str(script), doraise=True)     # as pip does on install
    _, seen, _ = boot(tmp_path, env=env, write=False)
    assert seen["name"] == "__main__"
    assert str(script) not in compiled.read_text().split()

    script.write_text(SCRIPT + "print('edited')\n")    # the bytecode is now stale
    compiled.write_text("")
    proc = subprocess.run([sys.executable, BOOT_SCRIPT, str(script)], capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "edited"
    assert compiled.read_text().split().count(str(script)) == 1


def test_worker_without_ray_numa_starts_unbound_with_a_warning(tmp_path):
    shadow = tmp_path / "shadow" / "ray_numa"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed in this env')\n")
    _, seen, err = boot(tmp_path, env={"PYTHONPATH": str(shadow.parent),
                                       "RAY_NUMA_SPEC": '{"node": "auto"}'})
    assert seen["name"] == "__main__"
    assert "ray_numa is not importable" in seen["boot_error"]
    assert "not installed in this env" in seen["boot_error"]
    assert "Running unbound" in seen["boot_error"]
    assert err == ""   # written to the worker's log once Ray connects it, not here


@pytest.mark.parametrize("spec,why", [
    ("{not json", "JSONDecodeError"),
    ('{"node": [7], "cpus": "node", "memory": "bind", "span": "union", "strict": true,'
     ' "migrate": true, "enabled": true, "from_a_newer_agent": 1}', None),
    ('{"node": "auto", "cpus": "node", "memory": "bind", "span": "union",'
     ' "strict": true, "migrate": true, "enabled": true, "gpu_table": {"0": 1}}', None),
])
def test_any_setup_failure_or_unknown_spec_key_still_starts_the_worker(tmp_path, spec, why):
    _, seen, err = boot(tmp_path, env={"RAY_NUMA_SPEC": spec, "RAY_NUMA_NUMACTL_ARGV": "[]"})
    assert seen["name"] == "__main__" and err == ""
    if why:
        assert why in seen["boot_error"] and "Running unbound" in seen["boot_error"]
    else:
        assert seen["boot_error"] is None


def test_probe_without_numactl_falls_back_to_in_process(monkeypatch):
    from ray_numa.apply import probe_numactl
    from ray_numa.policy import Plan
    monkeypatch.setenv("PATH", "/nonexistent")
    plan = Plan(cpus=frozenset({0}), cpu_nodes=(0,), mem_nodes=(0,), memory="bind", reason="t")
    argv, memory, notes = probe_numactl(plan)
    assert argv is None and "numactl is not installed" in notes[0]


HOOKED = ("import json, sys\n"
          "import ray._private.worker as w, ray._private.utils as u   # as default_worker.py\n"
          "assign = u.set_visible_accelerator_ids\n"
          "cache = sys.path_importer_cache[w.__file__.rsplit('/', 1)[0]]\n"
          "print(json.dumps({'assign': hasattr(assign, '__wrapped__'),"
          " 'assign_twice': hasattr(getattr(assign, '__wrapped__', None), '__wrapped__'),"
          " 'task_start': hasattr(w.Worker.record_task_log_start, '__wrapped__'),"
          " 'connect': w.connect.__name__, 'loader': type(w.__loader__).__name__,"
          " 'finder': type(cache).__name__}))\n")
WRAPPED = {"assign": True, "assign_twice": False, "task_start": True,
           "connect": "connect_then_log", "loader": "SourceFileLoader", "finder": "FileFinder"}


def _boot_with_site(tmp_path, sitecustomize, script_text):
    env = dict(os.environ, RAY_NUMA_SPEC='{"node": "auto"}')
    if sitecustomize:
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(sitecustomize)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(tmp_path / "site"), env.get("PYTHONPATH")) if p)
    script = tmp_path / "worker_main.py"
    script.write_text(script_text)
    proc = subprocess.run([sys.executable, BOOT_SCRIPT, str(script)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("ray_imported_at_startup", [False, True])
def test_ray_hooks_are_wrapped_once_when_default_worker_imports_ray(tmp_path,
                                                                    ray_imported_at_startup):
    """The module keeps its loader, and ``ray/_private`` gets its own finder back."""
    site = "import ray._private.worker\n" if ray_imported_at_startup else ""
    first = (f"import sys\nassert ('ray' in sys.modules) is {ray_imported_at_startup}"
             "   # the bootstrap imports no Ray\n")
    assert _boot_with_site(tmp_path, site, first + HOOKED) == WRAPPED


def test_a_ray_found_by_another_finder_is_imported_and_hooked_by_the_bootstrap(tmp_path):
    # e.g. an editable install of Ray: no directory on sys.path holds it
    site = ("import sys\n"
            f"sys.path.insert(0, {str(Path(BOOT_SCRIPT).parent)!r})\n"
            "import ray_numa_boot\n"
            "ray_numa_boot.AfterImport.install = classmethod(lambda cls, *a: False)\n")
    first = "import sys\nassert 'ray._private.worker' in sys.modules\n"
    assert _boot_with_site(tmp_path, site, first + HOOKED) == WRAPPED


def test_after_import_wraps_only_a_package_found_on_sys_path():
    sys.path.insert(0, str(Path(BOOT_SCRIPT).parent))
    try:
        from ray_numa_boot import AfterImport
        assert AfterImport.install("no_such_top_package.sub.mod", print) is False
    finally:
        sys.path.remove(str(Path(BOOT_SCRIPT).parent))


def test_a_worker_whose_ray_cannot_import_fails_as_it_would_without_ray_numa(tmp_path):
    broken = tmp_path / "broken" / "ray"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('ray is broken here')\n")
    script = tmp_path / "worker_main.py"
    script.write_text("import ray\n")
    env = dict(os.environ, RAY_NUMA_SPEC='{"node": "auto"}', PYTHONPATH=str(broken.parent))
    runs = [subprocess.run([sys.executable, *argv, str(script)], capture_output=True,
                           text=True, timeout=120, env=env)
            for argv in ([BOOT_SCRIPT], [])]
    for proc in runs:
        assert proc.returncode == 1
        assert proc.stderr.rstrip().endswith("ImportError: ray is broken here")
        assert f'File "{script}", line 1' in proc.stderr    # the worker's own import
