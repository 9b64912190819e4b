"""Each Ray worker's binding, published as a small file so `ray-numa audit` can read it.

What ray-numa decided lives in the worker's memory; the audit runs in another
process (a probe task on the same node, in the same Ray session). So every worker
that the plugin started writes its :class:`~ray_numa.binding.Binding` to
``<dir>/<pid>.json`` whenever it changes (see :func:`ledger_dir` for where:
``$XDG_RUNTIME_DIR/ray-numa-bindings/<session>@<host>``, else
``~/.cache/ray-numa-bindings/<session>@<host>``). Pids are reused, so each record
carries the process start time (``/proc/<pid>/stat`` field 22) and a record whose
start time no longer matches belongs to a dead process and is ignored (and pruned);
it names its pid namespace too, which another container's prune leaves alone.
Only processes that the plugin started (``RAY_NUMA_SPEC`` set) publish; publishing
never fails a worker.

Nobody else may write there: a directory another user can write lets them plant
``.<pid>.tmp`` symlinks (the worker would overwrite a file of its own user through
them) and forge records (unbound workers would pass the audit). So the directory is
created 0700 and used only after its open descriptor (``O_NOFOLLOW | O_DIRECTORY``)
shows a directory owned by this user with no group or other access; files are
created ``O_EXCL | O_NOFOLLOW`` relative to that descriptor and renamed into place,
and a record is read only if it is a regular file and well formed. The audit then
checks a record against what the kernel says (``ray_numa/audit.py``).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple, Union

from . import environment, shapes
from .shapes import shape
from .sysfs import listdir

DIR_NAME = "ray-numa-bindings"
STATUSES = ("bound", "skipped", "off", "unbound")
MAX_RECORD = 1 << 20      # bytes: a record is ~1 KiB; more is not one of ours
#: The shape of each field of a published binding (``Binding.as_dict()`` as JSON).
_FIELDS = {
    "status": shape(str), "reason": shape(str), "cpus": shape(str),
    "cpu_nodes": shape(list, int), "mem_nodes": shape(list, int), "memory": shape(str),
    "gpus": shape(list, str), "gpu_rule": shape(str), "history": shape(list, dict),
    "backend": shape(str), "notes": shape(list, str), "calls": shape(list, list)}


class RecordError(ValueError):
    """A record that is not one ray-numa wrote: malformed, or not a plain file."""


def _session_name() -> Optional[str]:
    """This Ray worker's session (``session_<date>_<pid>``), or None outside a worker.

    The raylet starts every worker with ``--session-name=`` (``ray/_private/services.py``,
    the worker command; Ray 2.48 to 2.60). Both the worker and the audit's probe (a
    worker of the same session on the same node) read it from their own argv, from
    the interpreter's start on.
    """
    args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    name = args.get("--session-name") or _driver_session()
    return name if name and os.sep not in name and name not in (".", "..") else None


def _driver_session() -> Optional[str]:
    """The session of the cluster a driver on this node is connected to (its node's
    ``session_name``), so that the audit's ``examine`` called from a driver reads the
    records its workers wrote; None when Ray is not loaded or not connected."""
    worker = getattr(sys.modules.get("ray._private.worker"), "global_worker", None)
    try:
        name = worker.node.session_name if worker is not None and worker.connected else None
    except Exception:    # a driver being torn down, another Ray: no session to name
        return None
    return name if isinstance(name, str) else None


def _users_alone(path: str) -> bool:
    """Whether ``path`` is a directory of this user's that nobody else can write to."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and \
        not info.st_mode & 0o022


def _private_base() -> Optional[Path]:
    """``ray-numa-bindings`` in a directory only this user can write:
    ``$XDG_RUNTIME_DIR`` (the user's own, 0700, per the XDG Base Directory spec), else
    ``~/.cache``; None if neither anchor (the runtime or home directory) is this
    user's alone."""
    runtime, home = os.environ.get("XDG_RUNTIME_DIR", ""), os.path.expanduser("~")
    for anchor, base in ((runtime, DIR_NAME), (home, f".cache/{DIR_NAME}")):
        if os.path.isabs(anchor) and _users_alone(anchor):
            return Path(anchor) / base
    return None


def ledger_dir() -> Path:
    """Where this node's workers publish: ``<base>/<Ray session name>@<host>``, the base
    (:func:`_private_base`) one only this user can write, so nobody else can create,
    swap or fill it. Not Ray's session directory: Ray makes ``/tmp/ray`` and each
    ``session_*`` directory mode 0777 without the sticky bit, where another user
    could take the name first (``<base>/local@<host>`` outside a Ray worker). The host
    name keeps nodes that share a home directory apart: pids are per node, and each
    node's prune would delete the others' records. Only where no such base exists
    (no home directory of one's own) the temp directory's ``ray-numa-bindings-<uid>``:
    there the owner and mode checks of :func:`_open_dir` refuse a directory someone
    else made (publishing stops)."""
    base = _private_base()
    if base is not None:   # a home directory may be shared by every node (NFS)
        return base / f"{_session_name() or 'local'}@{socket.gethostname()}"
    return Path(tempfile.gettempdir()) / f"{DIR_NAME}-{os.getuid()}"


def _open_dir(create: bool, path: Optional[Path] = None) -> int:
    """A descriptor of ``path`` (default :func:`ledger_dir`) once it shows a directory
    that only this user can use; PermissionError (naming it and what is wrong) if not."""
    path = ledger_dir() if path is None else path
    if create:
        os.makedirs(path.parent.parent, exist_ok=True)   # ~/.cache may not exist yet
        for folder in (path.parent, path):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                pass
    # O_NOFOLLOW: a symlink in its place fails (ELOOP/ENOTDIR) instead of being followed
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    problem = (f"owned by uid {info.st_uid}, not {os.getuid()}" if info.st_uid != os.getuid()
               else f"mode {stat.S_IMODE(info.st_mode):o} lets others in"
               if info.st_mode & 0o077 else "")
    if problem:
        os.close(fd)
        raise PermissionError(errno.EPERM, f"not this user's alone ({problem}); remove it",
                              str(path))
    return fd


def start_time(pid: Union[int, str] = "self") -> Optional[str]:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces and ')': split after the last ')'
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> Optional[str]:
    """This process's pid namespace (``pid:[4026531836]``, namespaces(7)), which gives
    its pids their meaning; None if /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _write(folder: int, name: str, data: bytes) -> None:
    """``data`` into ``name`` in ``folder`` (a descriptor), atomically; never through
    a link someone planted."""
    tmp = f".{os.getpid()}.{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600, dir_fd=folder)
    except FileExistsError:     # left by a process that died with this pid
        os.unlink(tmp, dir_fd=folder)        # removes a link itself, never its target
        fd = os.open(tmp, flags, 0o600, dir_fd=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)   # replaces, never follows


def publish(binding: Any) -> None:
    """Write this process's binding (atomically) if the plugin started it."""
    if not os.environ.get(environment.SPEC_ENV):
        return
    record = {"pid": os.getpid(), "start_time": start_time(), "pidns": _pid_namespace(),
              "binding": binding.as_dict()}
    data = json.dumps(record, default=str).encode()
    try:
        for attempt in range(3):
            folder = _open_dir(create=True)
            try:
                _write(folder, f"{os.getpid()}.json", data)
                break
            except FileNotFoundError:
                # another session's audit (prune) removed the directory, empty, between
                # its creation and this write: make it again (it is not empty then)
                if attempt == 2:
                    raise
            finally:
                os.close(folder)
    except PermissionError as exc:     # someone else's directory: say so, once
        environment.warn_once(f"not publishing this worker's binding for `ray-numa audit`: "
                              f"{exc.filename} is {exc.strerror}")
    except OSError as exc:     # a read-only /tmp costs the audit, not the worker
        environment.logger().debug("cannot publish binding for audit: %s", exc)


def problem(record: Any, pid: int) -> str:
    """Why ``record`` is not a record of ``pid`` as :func:`publish` writes it ("" if it is)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("pid") != pid or not all(
            isinstance(record.get(k), (str, type(None))) for k in ("start_time", "pidns")):
        return f"its pid/start_time/pidns are not {pid}'s"
    binding = record.get("binding")
    if not isinstance(binding, dict):
        return "its 'binding' is not an object"
    why = shapes.problem(binding, _FIELDS)
    if why:
        return why
    if binding["status"] not in STATUSES:
        return f"its status is not one of {', '.join(STATUSES)}"
    return ""


def _load(folder: int, name: str, pid: int) -> Dict[str, Any]:
    """The record in ``name``; RecordError if it is not one :func:`publish` wrote."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                 dir_fd=folder)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_RECORD:
            raise RecordError("its record is not a regular file of at most 1 MiB")
        try:
            record = json.loads(f.read(MAX_RECORD))
        except ValueError as exc:
            raise RecordError(f"its record is not JSON: {exc}") from None
    why = problem(record, pid)
    if why:
        raise RecordError(f"its record is malformed: {why}")
    return record


def read(pid: int) -> Optional[Dict[str, Any]]:
    """The binding ``pid`` published (as a dict), or None: never bound, or gone.
    RecordError: a record is there but not one ray-numa wrote (the audit says so);
    PermissionError: the directory is not this user's alone."""
    try:
        folder = _open_dir(create=False)
    except FileNotFoundError:
        return None
    try:
        record = _load(folder, f"{pid}.json", pid)
    except FileNotFoundError:
        return None
    except OSError as exc:       # a symlink (ELOOP), a directory...
        raise RecordError(f"its record cannot be read: {exc.strerror}") from None
    finally:
        os.close(folder)
    if record["start_time"] != start_time(pid):
        return None            # an earlier process with the same pid
    return record["binding"]


def _records(names: Iterable[str]) -> Iterator[Tuple[str, int]]:
    """The ``<pid>.json`` among ``names`` (a folder's entries), with their pids."""
    for name in names:
        stem, dot, ext = name.partition(".")
        if dot and ext == "json" and stem.isdigit():
            yield name, int(stem)


def _prune_folder(folder: int, own: bool) -> int:
    """Remove the records of exited processes, and files that are no records, from
    ``folder`` (a descriptor); how many records are left. In another session's
    folder (``own`` false) a file this version cannot read goes only once no process
    has its pid: that session may run another ray-numa version, whose record of a
    live worker (a new status, a new field type) is no forgery."""
    left, here, names = 0, _pid_namespace(), os.listdir(folder)
    for name, pid in _records(names):
        try:
            record = _load(folder, name, pid)
            # another pid namespace's (a container sharing this host name and home):
            # its pid means another process here, so only its own audit may judge it
            stale = record.get("pidns") in (None, here) and \
                record["start_time"] != start_time(pid)
        except FileNotFoundError:
            continue
        except (RecordError, OSError):   # not a record (a link, a forgery): goes too
            stale = own or start_time(pid) is None
        if stale:
            try:
                os.unlink(name, dir_fd=folder)
                continue
            except OSError:
                pass
        left += 1
    _drop_stale_temporaries(folder, names)
    return left


#: A ``.<pid>.<thread>.tmp`` older than this was left by a writer that died mid-write
#: (a write takes microseconds); any pid namespace's, so its age decides, not its pid.
STALE_TMP_S = 300


def _drop_stale_temporaries(folder: int, names: Iterable[str]) -> None:
    now = time.time()
    for name in names:
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if now - info.st_mtime > STALE_TMP_S:
                    os.unlink(name, dir_fd=folder)
            except OSError:
                pass


def prune() -> None:
    """Remove records of processes that have exited, and files that are no records, in
    this session's directory and in those of this host's earlier sessions; an earlier
    session's directory left empty goes too (each Ray session makes one, and a home
    directory would otherwise collect them), and so does a temporary file a worker
    left when it died mid-write. Another host's directories (a shared home) are its
    own to prune: its pids are not this host's."""
    current = ledger_dir()
    siblings = []
    base = current.parent
    if base.name == DIR_NAME and _users_alone(str(base)):
        host = "@" + socket.gethostname()
        siblings = [n for n in listdir(base) if n.endswith(host) and n != current.name]
    for name in [current.name] + siblings:
        try:
            folder = _open_dir(create=False, path=base / name)
        except OSError:
            continue
        try:
            left = _prune_folder(folder, own=name == current.name)
        finally:
            os.close(folder)
        if name != current.name and not left:
            try:
                os.rmdir(base / name)      # fails (and stays) if a worker just wrote there
            except OSError:
                pass

