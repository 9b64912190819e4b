"""Worker bootstrap: ``<python> boot.py default_worker.py <args>`` (see :func:`prepare`).

The ray-numa plugin puts this module (through the two-line script ``boot.py``, so
that it loads from bytecode) between the worker's interpreter and Ray's
``default_worker.py``. Three rules shape it:

* It must never stop a worker from starting: anything ray_numa raises here (not only
  ImportError: a broken install, a spec from a newer agent) is reported and the worker
  runs unbound.
* It must cost next to nothing. It imports ``ray._private.worker`` itself, right
  before running ``default_worker.py``, whose own first import is ``ray``: the same
  imports in the same order, and Ray's hooks are wrapped once that returns. (A
  ``sys.meta_path`` hook waiting for the import instead was a Python call on each of
  the ~700 imports before it: ~3 million instructions per worker, measured with
  callgrind.)
* What it says must land in the worker's own log, not in ``raylet.err``: the worker's
  stderr is the raylet's until ``ray._private.worker.connect()`` points it at
  ``worker-*.err``, so messages are written after ``connect`` returns.
"""
import os
import runpy
import sys

#: Why ray_numa could not set up this worker; ``current_binding()`` reports it.
BOOT_ERROR_ENV = "RAY_NUMA_BOOT_ERROR"


def _say(message):
    sys.stderr.write(f"[ray_numa] WARNING {message}\n")


def load_ray_numa():
    """(ray_numa.worker or None, a message for the worker's log or None)."""
    worker = None
    try:
        from ray_numa import worker
        worker.install()
        return worker, None
    except Exception as exc:        # never stop the worker from starting
        if worker is None:
            why = (f"ray_numa is not importable by this worker's interpreter "
                   f"({sys.executable}): {type(exc).__name__}: {exc}; install ray-numa "
                   "into the worker's environment.")
        else:
            why = f"ray_numa failed to set up this worker: {type(exc).__name__}: {exc}."
        message = f"{why} Running unbound."
        os.environ[BOOT_ERROR_ENV] = message
        return worker, message      # the worker, if imported, still releases its log


def on_ray_worker_module(module, worker, message):
    """Wrap Ray's hooks (via ray_numa) and ``connect``, to log once the log is Ray's."""
    if worker is not None:
        try:
            worker.hook_ray(module)
        except Exception as exc:    # never stop the worker from starting
            message = f"ray_numa could not hook Ray: {type(exc).__name__}: {exc}"

    def log_ready():
        if message:
            _say(message)
        if worker is not None:
            worker.log_ready()

    connect = getattr(module, "connect", None)
    if connect is None:
        log_ready()
        return

    def connect_then_log(*args, **kwargs):
        result = connect(*args, **kwargs)
        try:
            log_ready()
        except Exception:
            pass
        return result

    module.connect = connect_then_log


def prepare():
    """Set the worker up and return the script to run (``default_worker.py``)."""
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    # Look like `python default_worker.py`: its directory first on the path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    worker, message = load_ray_numa()     # first: an explicit node binds before Ray loads
    try:
        import ray._private.worker as ray_worker
    except Exception:   # default_worker.py's own `import ray` reports it, as without us
        return script
    on_ray_worker_module(ray_worker, worker, message)
    return script


if __name__ == "__main__":
    runpy.run_path(prepare(), run_name="__main__")
