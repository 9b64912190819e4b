"""``ray-numa audit`` on this machine's real kernel (its own cluster: no fixture)."""
import os
import socket
import stat
from pathlib import Path

import pytest

from conftest import ray_cluster
from tests.inspect_proc import inspect
from tests.test_audit import rows_by_pid

pytestmark = pytest.mark.ray


def test_audit_reads_what_the_kernel_applied():
    """On this machine's real kernel, an explicit-node worker is really bound: the audit
    reads its affinity and its mappings' policy back from /proc."""
    from ray_numa.audit import run_audit
    with ray_cluster(num_gpus=0) as ray:
        @ray.remote(num_cpus=0, runtime_env={"numa_bind": {"node": 0, "cpus": [1]}})
        class Pinned:
            def inspect(self):
                self.buf = bytearray(32 << 20)
                return inspect()

        pinned = Pinned.remote()
        truth = ray.get(pinned.inspect.remote(), timeout=300)
        report = run_audit()
        row = rows_by_pid(report)[truth["pid"]]
        # the record is under a base only this user can write ($XDG_RUNTIME_DIR, else
        # ~/.cache), keyed by Ray's session name, in 0700 directories
        session = Path(ray._private.worker.global_worker.node.get_session_dir_path()).name
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        base = Path(runtime if runtime else Path.home() / ".cache", "ray-numa-bindings")
        folder = base / f"{session}@{socket.gethostname()}"   # homes may be shared
        assert (folder / f"{truth['pid']}.json").is_file()
        assert not (Path(ray._private.worker.global_worker.node.get_session_dir_path())
                    / "ray-numa-bindings").exists()
        for path in (base, folder):
            assert stat.S_IMODE(path.lstat().st_mode) == 0o700 and \
                path.lstat().st_uid == os.getuid()
    assert truth["binding"]["status"] == "bound" and truth["cpus_allowed"] == "1"
    assert row["binding"]["status"] == "bound" and row["binding"]["cpus"] == "1"
    assert row["actual"]["cpus_allowed"] == "1" and row["actual"]["mempolicy"] == "bind:0"
    assert row["local_pct"] == 100.0 and row["gpus"] is None and row["flags"] == []
    # no dashboard in this cluster: the audit says what it cannot know
    assert report["ok"] and "state API is unavailable" in report["notes"][0]

