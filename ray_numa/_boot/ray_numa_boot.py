"""Worker bootstrap: ``<python> ray_numa_boot.py default_worker.py <args>``.

The ray-numa plugin puts this file between the worker's interpreter and Ray's
``default_worker.py``. It only uses the standard library until ray_numa is imported,
so a worker whose interpreter lacks ray_numa (a pip/uv/conda env without it) still
starts, unbound, with a warning, instead of dying on an ImportError.
"""
import os
import runpy
import sys


def main():
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    # Look like `python default_worker.py`: its directory first on the path.
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        from ray_numa import worker
    except ImportError as exc:
        sys.stderr.write(
            "[ray_numa] WARNING ray_numa is not importable by this worker's "
            f"interpreter ({sys.executable}): {exc}; install ray-numa into the "
            "worker's environment. Running unbound.\n")
    else:
        worker.install()
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
