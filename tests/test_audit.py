"""``ray-numa audit`` against a real local Ray cluster, and the Ray metrics it records.

The cluster sees the "mixed" fixture machine (3 fake GPUs: one on node 0, one on
node 1, one the firmware does not place), so bindings there are recorded rather
than applied, while numa_maps are this host's: all memory on node 0. A worker bound
to node 0 therefore measures 100 % local, one bound to node 1 measures 0 %: the audit
must report both as they are. A GPU actor without numa_bind must show as unbound.
"""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from conftest import ray_cluster
from ray_numa.audit import NOT_REQUESTED, memory_policies
from tests.inspect_proc import inspect
from tests.procs import PRELUDE, ROOT, run_child

pytestmark = pytest.mark.ray


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(machine_tree):
    port = _free_port()
    with ray_cluster(fixture_root=machine_tree("mixed"), num_gpus=3, include_dashboard=True,
                     _metrics_export_port=port) as ray:
        yield ray, port


def audit(ray, *args):
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-m", "ray_numa.cli", "audit", "--address",
                           address, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return proc


def rows_by_pid(report):
    return {r["pid"]: r for node in report["nodes"] for r in node["rows"]}


def make_model(ray, **options):
    @ray.remote(num_gpus=1, **options)
    class Model:
        def inspect(self):
            self.buf = bytearray(64 << 20)     # resident memory worth measuring
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])
    return Model


def expected_local(binding):
    """This host has one node: memory bound for node 0 is all local, for node 1 none."""
    if binding["status"] == "bound":
        return 100.0 if binding["mem_nodes"] == [0] else 0.0
    return None                 # skipped: the firmware does not place that GPU


def test_audit_reports_bound_skipped_and_plain_workers_then_gates(cluster):
    ray, port = cluster
    plain = make_model(ray).remote()
    auto = [make_model(ray, runtime_env={"numa_bind": "auto"}).remote() for _ in range(2)]
    truth = ray.get([a.inspect.remote() for a in [plain, *auto]], timeout=300)

    proc = audit(ray, "--json")
    report = json.loads(proc.stdout)
    rows = rows_by_pid(report)
    assert proc.returncode == 1 and not report["ok"] and report["notes"] == []
    [node] = report["nodes"]
    assert node["plugin"] is True
    p = rows[truth[0]["pid"]]
    assert p["binding"] == {"status": "unbound", "reason": NOT_REQUESTED}
    assert p["gpus"] == 1 and p["name"].endswith("Model") and p["flags"] == ["unbound GPU worker"]
    for t in truth[1:]:
        r = rows[t["pid"]]
        assert r["binding"]["status"] == t["binding"]["status"]
        assert r["binding"]["reason"] == t["binding"]["reason"]
        assert r["binding"]["gpus"] == t["gpu_ids"] and r["gpus"] == 1
        assert r["local_pct"] == expected_local(t["binding"])
        assert r["actual"]["cpus_allowed"] == t["cpus_allowed"]     # recorded, not applied
        assert r["actual"]["mempolicy"] == "default" and r["flags"] == []
        assert r["job"] == p["job"] != ""

    # the person's table: grouped by node, the unbound worker marked
    table = audit(ray).stdout
    assert f"node {node['node']} (plugin on)" in table
    assert re.search(rf"^! {truth[0]['pid']}\s+\S*Model\s", table, re.M), table
    assert "FAIL: 1 GPU worker(s)" in table

    # every GPU now in a numa_bind actor: the gate turns on --min-local alone
    ray.kill(plain)
    auto.append(make_model(ray, runtime_env={"numa_bind": "auto"}).remote())
    truth = truth[1:] + [ray.get(auto[-1].inspect.remote(), timeout=300)]
    locals_ = [expected_local(t["binding"]) for t in truth]
    assert 0.0 in locals_ and 100.0 in locals_       # GPUs on node 0 and node 1, bound
    assert audit(ray, "--min-local", "0").returncode == 0
    failing = audit(ray, "--json", "--min-local", "50")
    assert failing.returncode == 1
    flagged = [r["pid"] for r in rows_by_pid(json.loads(failing.stdout)).values() if r["flags"]]
    assert flagged == [t["pid"] for t in truth if expected_local(t["binding"]) == 0.0]

    # the probe recorded this node's gauges; Ray exports them with a "ray_" prefix
    text = _scrape(port, 'ray_numa_gpu_workers{')
    counts = {s: sum(t["binding"]["status"] == s for t in truth) for s in ("bound", "skipped")}
    for status, count in {**counts, "unbound": 0, "off": 0}.items():
        assert re.search(rf'^ray_numa_gpu_workers{{[^}}]*status="{status}"[^}}]*}} '
                         rf'{count}\.0$', text, re.M), (status, text)
    for t in truth:
        want = expected_local(t["binding"])
        if want is not None:
            assert re.search(rf'^ray_numa_local_memory_percent{{[^}}]*pid="{t["pid"]}"'
                             rf'[^}}]*}} {want}$', text, re.M), (t["pid"], text)
    for a in auto:
        ray.kill(a)


def _scrape(port, needle, timeout=90):
    """Ray's Prometheus endpoint on this node once it shows ``needle``."""
    deadline = time.time() + timeout
    while True:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                          timeout=10).read().decode()
        except OSError:
            text = ""
        if needle in text and "ray_numa_local_memory_percent{" in text:
            return text
        assert time.time() < deadline, f"no {needle} in Ray's metrics after {timeout}s"
        time.sleep(2)


def test_memory_policy_per_mapping_is_weighted_by_resident_size():
    # /proc/<pid>/numa_maps lines (kernel Documentation/filesystems/proc.rst format)
    text = ("00400000 default file=/usr/bin/python3 mapped=10 N0=10 kernelpagesize_kB=4\n"
            "7f0000000000 bind:1 anon=512 dirty=512 N1=512 kernelpagesize_kB=4\n"
            "7f1000000000 bind:1 anon=1 dirty=1 N0=1 kernelpagesize_kB=2048\n"
            "7f2000000000 interleave:0-1\n")
    assert memory_policies(text) == {"default": 40, "bind:1": 2048 + 2048, "interleave:0-1": 0}


def test_a_published_binding_dies_with_its_process():
    """Pids are reused: a record is only believed while its process's start time matches."""
    from ray_numa import ledger
    code = '''
        import sys, time
        from ray_numa import binding, ledger
        ledger.publish(binding.Binding(status="bound", reason="test", cpus="0"))
        print(os.getpid(), flush=True)
        sys.stdin.readline()
    '''
    # a worker of this module's cluster, as the raylet starts one: with its session's name
    session = [f"--session-name={name}" for name in [ledger._session_name()] if name]
    child = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(code), *session],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT), RAY_NUMA_SPEC="{}"))
    pid = int(child.stdout.readline())
    assert ledger.read(pid)["reason"] == "test"
    child.communicate("\n", timeout=60)
    assert ledger.read(pid) is None
    ledger.prune()
    assert not (ledger.ledger_dir() / f"{pid}.json").exists()
    # and a process the plugin did not start publishes nothing
    quiet = run_child('''
        from ray_numa import binding, ledger
        ledger.publish(binding.Binding(status="bound", reason="x"))
        print(os.getpid())''', env={"RAY_NUMA_SPEC": ""})
    assert not (ledger.ledger_dir() / f"{quiet.stdout.split()[-1]}.json").exists()


#: A record's binding as ``Binding.as_dict()`` writes it, with every field the
#: ledger checks: the one the prune tests publish.
OFF = {"status": "off", "reason": "", "cpus": "", "cpu_nodes": [], "mem_nodes": [],
       "memory": "", "gpus": [], "gpu_rule": "", "history": [], "backend": "", "notes": [],
       "calls": []}


def private_runtime(tmp_path, monkeypatch):
    """A fresh ``$XDG_RUNTIME_DIR`` of this user's alone (0700): the ledger's base
    is ``<it>/ray-numa-bindings``, away from every other test's records."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_prune_clears_this_hosts_ended_sessions_and_keeps_the_rest(tmp_path, monkeypatch):
    """Every Ray session makes ``<session>@<host>``: once its workers have exited, the
    audit's prune removes their records and the emptied directory. A live process's
    record, this session's directory, another host's (a shared home) and anything
    that is not this user's alone stay."""
    from ray_numa import ledger
    runtime = private_runtime(tmp_path, monkeypatch)
    base, host = runtime / ledger.DIR_NAME, socket.gethostname()
    dead = run_child("print(os.getpid())").stdout.split()[-1]      # exited by now
    live = {"pid": os.getpid(), "start_time": ledger.start_time(), "binding": OFF}
    folders = {name: base / f"{name}@{h}" for name, h in (
        ("session_ended", host), ("session_live", host), ("session_other", "otherhost"))}
    for folder in folders.values():
        folder.mkdir(parents=True, mode=0o700)
        (folder / f"{dead}.json").write_text(json.dumps(dict(live, pid=int(dead))))
    (folders["session_live"] / f"{os.getpid()}.json").write_text(json.dumps(live))
    ledger.prune()
    assert not folders["session_ended"].exists()
    assert sorted(os.listdir(folders["session_live"])) == [f"{os.getpid()}.json"]
    assert os.listdir(folders["session_other"]) == [f"{dead}.json"]
    assert ledger.ledger_dir().parent == base        # (this test's own session: "local")
    (base / f"session_open@{host}").mkdir(mode=0o755)       # others may write: not ours
    ledger.prune()
    assert (base / f"session_open@{host}").exists()


def test_prune_leaves_a_live_record_of_another_pid_namespace(tmp_path, monkeypatch):
    """Two containers on one host name (Docker's ``--network host`` keeps the host's
    name; a pod's containers share one) with one home directory mounted: each runs
    its own Ray session in its own pid namespace, so the other's pids mean nothing
    here. Before, this container's audit judged the other's live records by its own
    /proc (pid 1 here is another process) and deleted them: the other audit then
    called its bound workers unbound. A record says which pid namespace wrote it."""
    from ray_numa import environment, ledger
    private_runtime(tmp_path, monkeypatch)
    unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
    try:
        ok = subprocess.run(unshare + ["true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("unshare cannot make a pid namespace here")
    code = textwrap.dedent(f"""
        import sys
        from ray_numa import ledger
        class Bound:
            def as_dict(self):
                return {OFF!r}
        ledger.publish(Bound())
        print(ledger.ledger_dir(), flush=True)
        sys.stdin.read()         # alive until the test closes stdin
    """)
    env = dict(os.environ, **{environment.SPEC_ENV: "{}", "PYTHONPATH": str(ROOT)})
    other = subprocess.Popen(unshare + [sys.executable, "-c", code, "--session-name=session_b"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        folder = other.stdout.readline().strip()
        assert folder.endswith(f"session_b@{socket.gethostname()}")
        assert os.listdir(folder) == ["1.json"]        # pid 1 of its own namespace
        ledger.prune()                                 # this session: "local"
        assert os.listdir(folder) == ["1.json"]
    finally:
        other.stdin.close()
        other.wait(timeout=30)


def test_prune_keeps_another_sessions_record_that_another_version_wrote(tmp_path,
                                                                         monkeypatch):
    """Two Ray clusters of one user on one host may run different ray-numa versions
    (two virtualenvs). A newer version's record of a live worker (here a status this
    version does not know) is not this version's to call a forgery in the other
    session's directory: before, this session's audit deleted it (and the directory),
    and the other session's audit called the worker unbound. In that directory an
    unreadable file goes only once its pid is gone; in this session's, as before."""
    from ray_numa import ledger
    runtime = private_runtime(tmp_path, monkeypatch)
    base, host = runtime / ledger.DIR_NAME, socket.gethostname()
    dead = run_child("print(os.getpid())").stdout.split()[-1]      # exited by now
    newer = {"pid": os.getpid(), "start_time": ledger.start_time(),
             "binding": {"status": "partial", "future_field": 1}}
    other, mine = base / f"session_other@{host}", ledger.ledger_dir()     # this session's
    for folder in (other, mine):
        folder.mkdir(parents=True, mode=0o700)
        (folder / f"{os.getpid()}.json").write_text(json.dumps(newer))
        (folder / f"{dead}.json").write_text("not JSON")
    ledger.prune()
    assert os.listdir(other) == [f"{os.getpid()}.json"]
    assert os.listdir(mine) == []


def test_a_record_published_while_another_sessions_audit_prunes_is_kept(tmp_path, monkeypatch):
    """Two Ray sessions of one user on one host (two clusters, or a worker of session B
    starting while session A's audit runs): A's prune finds B's directory empty (its
    workers so far have exited) and removes it just after a new worker of B created it
    and before that worker's record is written there. Before, the write failed (ENOENT
    in the removed directory) and the worker's binding was lost: B's audit called a
    bound worker 'ray-numa has not bound this process'."""
    from ray_numa import environment, ledger
    private_runtime(tmp_path, monkeypatch)
    monkeypatch.setenv(environment.SPEC_ENV, "{}")
    session = ["session_b"]
    monkeypatch.setattr(ledger, "_session_name", lambda: session[0])
    real_open, interleaved = ledger._open_dir, []

    def open_then_prune(create, path=None):
        fd = real_open(create, path)
        if create and not interleaved:          # session A's audit runs right now
            interleaved.append(True)
            session[0] = "session_a"
            ledger.prune()
            session[0] = "session_b"
        return fd
    monkeypatch.setattr(ledger, "_open_dir", open_then_prune)

    class Bound:
        def as_dict(self):
            return OFF
    ledger.publish(Bound())
    assert interleaved
    assert ledger.read(os.getpid()) == Bound().as_dict()


@pytest.mark.parametrize("memory, mem_nodes, kernel, believed", [
    ("bind", [1], "bind:1", True),
    ("bind", [1], "bind:0", False),                 # the kind matches, the node does not
    ("bind", [0, 1], "bind:0", False),
    ("interleave", [0, 1], "interleave:0-1", True),
    ("interleave", [0, 1], "interleave:0", False),
    ("preferred", [1], "prefer:1", True),
    ("preferred", [1], "prefer:0", False),
    ("preferred", [0, 1], "prefer (many):0-1", True),
    ("preferred", [0, 1], "prefer (many):1", False),
    ("local", [1], "local", True),
    ("local", [1], "bind:1", False),
])
def test_the_audit_believes_a_policy_only_over_the_recorded_nodes(memory, mem_nodes, kernel,
                                                                 believed):
    """numa_maps spells a policy as mpol_to_str (mm/mempolicy.c) prints it, the mode
    then ``:`` and the node list; "prefer (many)" has a space, so is two fields."""
    from ray_numa.audit import contradiction
    text = (f"7f0000000000 {kernel} anon=512 dirty=512 N0=512 kernelpagesize_kB=4\n"
            "7f1000000000 default file=/usr/bin/python3 mapped=3 N0=3 kernelpagesize_kB=4\n")
    policies = memory_policies(text)
    assert kernel in policies
    record = {"status": "bound", "backend": "syscall", "cpus": "0", "memory": memory,
              "mem_nodes": mem_nodes}
    facts = {"cpus_allowed": "0", "mempolicies": sorted(policies)}
    said = contradiction(record, facts)
    assert (said == "") == believed, said


def test_prune_drops_a_dead_writers_temporary_and_then_its_directory(tmp_path, monkeypatch):
    """A worker killed between creating ``.<pid>.<tid>.tmp`` and renaming it leaves
    the file behind; once it is older than any write takes, prune removes it, so an
    ended session's directory can go. A fresh one (a write in flight, maybe in
    another pid namespace) stays."""
    from ray_numa import ledger
    runtime = private_runtime(tmp_path, monkeypatch)
    host = socket.gethostname()
    ended = runtime / ledger.DIR_NAME / f"session_ended@{host}"
    ended.mkdir(parents=True, mode=0o700)
    fresh = runtime / ledger.DIR_NAME / f"session_writing@{host}"
    fresh.mkdir(mode=0o700)
    old = ended / ".4242.1.tmp"
    old.write_text("{")
    os.utime(old, (time.time() - 2 * ledger.STALE_TMP_S,) * 2)
    (fresh / ".4243.1.tmp").write_text("{")
    ledger.prune()
    assert not ended.exists()
    assert os.listdir(fresh) == [".4243.1.tmp"]
