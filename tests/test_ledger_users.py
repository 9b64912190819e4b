"""The audit's ledger with a second user on the machine (issue 21, item 3).

The attacker is a real second uid: a forked child of this (root) test process that
drops to ``nobody`` with setgid/setuid before it touches anything, so the kernel's
own permission checks decide what it can do, as they would on a shared node. The
victim is a child process of this user publishing its binding as a Ray worker does.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from ray_numa import audit, ledger
from tests.procs import ROOT

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="playing a second user needs root (setuid)")

VICTIM = '''
    import json, os, sys, threading
    from ray_numa import binding, ledger
    print(os.getpid(), threading.get_ident(), flush=True)
    sys.stdin.readline()
    ledger.publish(binding.Binding(status="bound", reason="victim", cpus="0"))
    print(json.dumps({"dir": str(ledger.ledger_dir())}), flush=True)
    sys.stdin.readline()
'''


@pytest.fixture
def shared_tmp(monkeypatch):
    """A sticky world-writable directory, as /tmp is, that both users reach; this
    process's ledger lives there too (tempfile caches the temp directory): the last
    resort, for a user whose home directory is not their own alone (it is here)."""
    path = Path(tempfile.mkdtemp(prefix="ray-numa-users-", dir="/tmp"))
    path.chmod(0o1777)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(path))
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_other_user(action) -> None:
    """Run ``action()`` in a forked child that is uid/gid ``nobody``."""
    pid = os.fork()
    if pid == 0:        # the child: never returns into pytest
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the other user's action failed"


@pytest.fixture
def victim(shared_tmp):
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(shared_tmp), HOME=str(shared_tmp),
               RAY_NUMA_SPEC="{}")
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(VICTIM)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    pid, thread = map(int, child.stdout.readline().split())
    yield child, pid, thread
    child.kill()
    child.wait()


def test_a_planted_directory_is_refused_links_and_forged_records_included(shared_tmp, victim):
    child, pid, _ = victim
    folder = shared_tmp / f"ray-numa-bindings-{os.getuid()}"
    precious = {name: shared_tmp / name for name in ("secret", "config")}
    for path in precious.values():      # the victim's own files
        path.write_text("precious\n")
        path.chmod(0o600)
    sleeper = subprocess.Popen(["sleep", "300"])    # a process ray-numa never bound
    forged = {"pid": sleeper.pid, "start_time": ledger.start_time(sleeper.pid),
              "binding": {"status": "bound", "reason": "forged", "cpus": "0",
                          "cpu_nodes": [0], "mem_nodes": [0], "memory": "bind",
                          "gpus": ["0"], "gpu_rule": "assigned", "history": [],
                          "backend": "syscall", "notes": [], "calls": []}}

    def attack() -> None:
        folder.mkdir()
        folder.chmod(0o777)
        os.symlink(precious["secret"], folder / f".{pid}.tmp")       # the old temp name
        os.symlink(precious["config"], folder / f"{pid}.json")
        (folder / f"{sleeper.pid}.json").write_text(json.dumps(forged))

    try:
        as_other_user(attack)
        assert folder.stat().st_uid == NOBODY
        child.stdin.write("\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline())["dir"] == str(folder)
        # the victim wrote nothing, through no link
        assert {p.read_text() for p in precious.values()} == {"precious\n"}
        assert all(p.stat().st_uid == NOBODY or p.is_symlink() for p in folder.iterdir())
        # nor does the audit believe the other user's record
        with pytest.raises(PermissionError, match="owned by uid 65534"):
            ledger.read(sleeper.pid)
        row = audit.examine(sleeper.pid, plugin_here=True)
        assert row["binding"]["status"] == "unbound"
        assert "owned by uid 65534" in row["binding"]["reason"]
        ledger.prune()          # leaves someone else's directory alone
        assert (folder / f"{sleeper.pid}.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        child.stdin.write("\n")
        child.stdin.flush()


def test_a_stale_link_in_our_own_directory_is_replaced_not_followed(shared_tmp, victim):
    """O_EXCL | O_NOFOLLOW on the temp file and rename over the record: a link found
    at either name is replaced; what it points to is untouched."""
    child, pid, thread = victim
    folder = shared_tmp / f"ray-numa-bindings-{os.getuid()}"
    folder.mkdir(mode=0o700)
    precious = shared_tmp / "secret"
    precious.write_text("precious\n")
    for name in (f".{pid}.{thread}.tmp", f".{pid}.tmp", f"{pid}.json"):  # ours, and before
        os.symlink(precious, folder / name)
    child.stdin.write("\n")
    child.stdin.flush()
    child.stdout.readline()
    assert precious.read_text() == "precious\n"
    assert not (folder / f"{pid}.json").is_symlink()
    assert ledger.read(pid)["reason"] == "victim"
    assert sorted(p.name for p in folder.iterdir()) == [f".{pid}.tmp", f"{pid}.json"]
    child.stdin.write("\n")
    child.stdin.flush()


def write_record(pid: int, binding) -> None:
    """A record in this user's own ledger directory, as a worker would write it."""
    folder = ledger._open_dir(create=True)
    try:
        record = {"pid": pid, "start_time": ledger.start_time(pid), "binding": binding}
        ledger._write(folder, f"{pid}.json", json.dumps(record).encode())
    finally:
        os.close(folder)


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "300"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_malformed_record_is_reported_not_a_crash(shared_tmp, sleeper):
    for binding in ([], {"status": "bound"}, {"status": 1}, "bound", None):
        write_record(sleeper, binding)
        row = audit.examine(sleeper, plugin_here=True)
        assert row["binding"]["status"] == "unbound"
        assert "its record is malformed" in row["binding"]["reason"], binding
    (ledger.ledger_dir() / f"{sleeper}.json").write_text("{not json")
    assert "not JSON" in audit.examine(sleeper, True)["binding"]["reason"]
    ledger.prune()
    assert not (ledger.ledger_dir() / f"{sleeper}.json").exists()


def test_the_kernel_wins_over_what_a_record_says(shared_tmp, sleeper):
    """A record saying "bound" is checked against /proc/<pid>/status (every thread's
    affinity, Cpus_allowed_list) and numa_maps (the main thread's memory policy)."""
    facts = audit.process_facts(sleeper)
    claims = {"status": "bound", "reason": "claimed", "cpu_nodes": [0], "mem_nodes": [],
              "gpus": ["0"], "gpu_rule": "assigned", "history": [], "backend": "syscall",
              "notes": [], "calls": []}
    write_record(sleeper, dict(claims, cpus=facts["cpus_allowed"], memory="none"))
    assert audit.examine(sleeper, True)["binding"]["status"] == "bound"   # it is true

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to pin a process to one of them")
    other = min(os.sched_getaffinity(0))
    os.sched_setaffinity(sleeper, {other})
    wrong_cpus = facts["cpus_allowed"]        # what it had: no longer true
    write_record(sleeper, dict(claims, cpus=wrong_cpus, memory="none"))
    row = audit.examine(sleeper, True)
    assert row["binding"] == {"status": "unbound", "reason": (
        f"its record says bound, but the kernel has it on CPUs {other}, not {wrong_cpus}")}

    write_record(sleeper, dict(claims, cpus=str(other), memory="bind", mem_nodes=[0]))
    reason = audit.examine(sleeper, True)["binding"]["reason"]
    assert "no mapping in its numa_maps has memory policy bind:0" in reason
    # a fixture machine's recorded binding was never applied: here it is not believed
    write_record(sleeper, dict(claims, cpus=str(other), memory="none", backend="record"))
    assert "recorded for a fixture machine" in audit.examine(sleeper, True)["binding"]["reason"]


def test_another_user_cannot_squat_the_ledger_in_rays_shared_session_directory(
        tmp_path, monkeypatch):
    """Ray makes its temp directory and each ``session_*`` in it mode 0777 without the
    sticky bit (``try_make_directory_shared``), so another user could take
    ``<session>/ray-numa-bindings`` first, or swap it, and stop every record. The
    ledger lives under a base only this user can write instead, keyed by the session."""
    from ray_numa.binding import Binding
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-numa-raytmp-", dir="/tmp"))
    session = ray_tmp / "session_2026-12-06_03-00-00_000000_1"
    session.mkdir()
    for path in (ray_tmp, session):
        path.chmod(0o777)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("RAY_NUMA_SPEC", '{"node": "auto"}')
    monkeypatch.setattr(sys, "argv", ["default_worker.py", f"--temp-dir={ray_tmp}",
                                      f"--session-name={session.name}"])

    def squat() -> None:
        (session / "ray-numa-bindings").mkdir(mode=0o700)
        (session / "ray-numa-bindings").chmod(0o777)
        try:       # and where the ledger now is: nobody may even look
            os.listdir(home)
        except PermissionError:
            return
        raise AssertionError(f"{home} is open to another user")

    try:
        as_other_user(squat)
        ledger.publish(Binding(status="bound", reason="mine", cpus="0"))
        assert ledger.read(os.getpid())["reason"] == "mine"
        folder = ledger.ledger_dir()
        host = socket.gethostname()        # a home directory may be shared by nodes
        assert folder == home / ".cache/ray-numa-bindings" / f"{session.name}@{host}"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
        assert not any((session / "ray-numa-bindings").iterdir())
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
