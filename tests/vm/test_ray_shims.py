"""The VM tier's Ray shims against the Ray installed here, on the host (seconds, no VM):
each Ray internal they patch exists, and a missing one fails naming it."""
import os
import subprocess
import sys

from tests.procs import ROOT
from tests.vm import ray_shims


def install_in_child(before: str = "") -> subprocess.CompletedProcess:
    code = f"{before}\nfrom tests.vm import ray_shims\nray_shims.install()\nprint('installed')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), **ray_shims.GUEST_ENV),
                          timeout=120)


def test_every_patched_ray_internal_exists():
    proc = install_in_child()
    assert proc.returncode == 0 and "installed" in proc.stdout, proc.stderr


def test_a_ray_internal_that_is_gone_fails_by_name():
    proc = install_in_child("import ray._private.node as node\ndel node.Node.start_monitor")
    assert proc.returncode != 0
    assert "ShimOutdated: ray._private.node.Node.start_monitor is gone" in proc.stderr, proc.stderr
