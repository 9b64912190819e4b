"""Worker bootstrap: ``<python> boot.py default_worker.py <args>`` (see :func:`prepare`).

The ray-numa plugin puts this module (through the short script ``boot.py``, so
that it loads from bytecode) between the worker's interpreter and Ray's
``default_worker.py``. Three rules shape it:

* It must never stop a worker from starting: anything ray_numa raises here (not only
  ImportError: a broken install, a spec from a newer agent) is reported and the worker
  runs unbound.
* It must cost next to nothing: it imports no Ray. Ray's hooks are wrapped right
  after ``default_worker.py``'s own ``import ray`` executes ``ray._private.worker``,
  seen by a finder on that one directory (:class:`AfterImport`).
* What it says must land in the worker's own log, not in ``raylet.err``: the worker's
  stderr is the raylet's until ``ray._private.worker.connect()`` points it at
  ``worker-*.err``, so messages are written after ``connect`` returns.
"""
import importlib.machinery
import os
import sys

#: Why ray_numa could not set up this worker; ``current_binding()`` reports it.
BOOT_ERROR_ENV = "RAY_NUMA_BOOT_ERROR"
RAY_WORKER_MODULE = "ray._private.worker"


class AfterImport:
    """The finder of one package directory, wrapped to run ``callback(module)`` right
    after module ``name`` from it has executed.

    Only imports from that directory pass through it (for ``ray/_private``, ~35
    before ``ray._private.worker``), and it puts the directory's own finder back once
    it has found ``name``. (A ``sys.meta_path`` finder sees every import: ~700
    Python calls before Ray's worker module, ~3 M instructions per worker; importing
    Ray here instead, ahead of ``default_worker.py``, cost each worker ~450 more page
    faults, in real Ray workers.) The module keeps its real loader and spec: the
    spec's loader's ``exec_module`` is shadowed once.
    """

    def __init__(self, directory, finder, name, callback):
        self.directory, self.finder = directory, finder
        self.name, self.callback = name, callback

    @classmethod
    def install(cls, name, callback):
        """Wrap the finder of ``name``'s package directory; False if ``name``'s top
        package is not a directory on ``sys.path`` (found by another finder)."""
        top, _, rest = name.partition(".")
        spec = importlib.machinery.PathFinder.find_spec(top)     # imports nothing
        if spec is None or not spec.submodule_search_locations:
            return False
        directory = os.path.join(spec.submodule_search_locations[0],
                                 *rest.split(".")[:-1])
        for hook in sys.path_hooks:      # as PathFinder makes a directory's finder
            try:
                finder = hook(directory)
            except ImportError:
                continue
            sys.path_importer_cache[directory] = cls(directory, finder, name, callback)
            return True
        return False

    def find_spec(self, fullname, target=None):
        spec = self.finder.find_spec(fullname, target)
        if fullname != self.name or spec is None:
            return spec
        sys.path_importer_cache[self.directory] = self.finder     # once only
        loader = spec.loader
        original = getattr(loader, "exec_module", None)
        if original is None:
            return spec
        callback = self.callback

        def exec_module(module):
            del loader.exec_module          # back to the class's method
            original(module)
            try:
                callback(module)
            except Exception as exc:    # never break the import it hooks
                _say(f"ray_numa hook on {fullname} failed: {type(exc).__name__}: {exc}")

        loader.exec_module = exec_module
        return spec

    def invalidate_caches(self):
        self.finder.invalidate_caches()


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
    # Look like `python default_worker.py`: boot.py's own entry goes, and where Python
    # put boot.py's directory goes the script's, symlinks resolved (as CPython's
    # pathconfig computes sys.path[0]); under `python -P` or `-I` (-I alone before 3.11)
    # Python puts no script directory there.
    del sys.path[0]
    if not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
        sys.path[0] = os.path.dirname(os.path.realpath(script))
    worker, message = load_ray_numa()
    hook = lambda module: on_ray_worker_module(module, worker, message)  # noqa: E731
    if RAY_WORKER_MODULE in sys.modules:    # imported early (sitecustomize, a .pth)
        hook(sys.modules[RAY_WORKER_MODULE])
    elif not AfterImport.install(RAY_WORKER_MODULE, hook):
        try:        # Ray found by another finder (an editable install): import it now
            import ray._private.worker as ray_worker
        except Exception:   # default_worker.py's own `import ray` reports it
            return script
        hook(ray_worker)
    return script


def main_code(namespace):
    """Set the worker up; return the script's code, with ``namespace`` (``__main__``'s)
    made what ``python script`` gives a script.

    The code comes from the script's bytecode in ``__pycache__`` (written when Ray was
    installed) where ``SourceFileLoader`` finds it valid for the source, as an import
    would; else the source is compiled, as Python compiles a script, and the bytecode
    cached as an import caches it (unless Python writes no bytecode). ``python
    default_worker.py`` compiles it in every worker: ~8 M instructions, more than
    ray_numa's whole bootstrap. Not ``runpy.run_path``: it compiles the script too,
    imports ``pkgutil`` (~1 M instructions), which a plain worker never loads, and runs
    the script in a stand-in ``__main__`` module.
    """
    script = os.path.abspath(prepare())     # as Python makes a script's __file__
    loader = importlib.machinery.SourceFileLoader("__main__", script)
    code = loader.get_code("__main__")
    builtins = namespace["__builtins__"]
    namespace.clear()
    namespace.update(__name__="__main__", __doc__=None, __package__=None,
                     __loader__=loader, __spec__=None, __annotations__={},
                     __builtins__=builtins, __file__=script, __cached__=None)
    return code
