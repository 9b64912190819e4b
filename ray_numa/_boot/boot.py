"""``<python> boot.py default_worker.py <args>``: the command the plugin gives workers.

The work is in ``ray_numa_boot`` beside this file (found through this directory, put
first on ``sys.path``): a module loads from bytecode, while a script's source is
parsed and compiled in every worker (about 5 million instructions, ~1.5 ms, when the
whole bootstrap was the script). The worker's script runs here, at module level, in
this ``__main__``'s namespace, as ``python default_worker.py`` runs it. (Run from inside
a function, by ``runpy.run_path`` called in ``ray_numa_boot``, the same worker took 800
to 950 more minor page faults; measured with ``getrusage`` in real Ray workers.)
"""
import os
import sys

# not on sys.path under python -P or -I; prepare() takes it off again
sys.path.insert(0, os.path.dirname(__file__))
import ray_numa_boot  # noqa: E402

exec(ray_numa_boot.main_code(globals()), globals())
