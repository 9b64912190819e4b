"""The worker bootstrap the plugin puts before default_worker.py, run for real."""
import json
import os
import subprocess
import sys

from ray_numa.plugin import BOOT_SCRIPT


def boot(tmp_path, env=None):
    script = tmp_path / "worker_main.py"
    script.write_text("import json, sys\n"
                      "print(json.dumps({'argv': sys.argv, 'path0': sys.path[0],"
                      " 'name': __name__}))\n")
    proc = subprocess.run([sys.executable, BOOT_SCRIPT, str(script), "--flag", "x y"],
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return script, json.loads(proc.stdout.splitlines()[-1]), proc.stderr


def test_runs_the_worker_script_as_python_would(tmp_path):
    script, seen, _ = boot(tmp_path)
    assert seen == {"argv": [str(script), "--flag", "x y"], "path0": str(tmp_path),
                    "name": "__main__"}


def test_worker_without_ray_numa_starts_unbound_with_a_warning(tmp_path):
    shadow = tmp_path / "shadow" / "ray_numa"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed in this env')\n")
    _, seen, err = boot(tmp_path, env={"PYTHONPATH": str(shadow.parent)})
    assert seen["name"] == "__main__"
    assert "ray_numa is not importable" in err and "Running unbound" in err


def test_probe_without_numactl_falls_back_to_in_process(monkeypatch):
    from ray_numa.apply import probe_numactl
    from ray_numa.policy import Plan
    monkeypatch.setenv("PATH", "/nonexistent")
    plan = Plan(cpus=frozenset({0}), cpu_nodes=(0,), mem_nodes=(0,), memory="bind", reason="t")
    argv, memory, notes = probe_numactl(plan)
    assert argv is None and "numactl is not installed" in notes[0]
