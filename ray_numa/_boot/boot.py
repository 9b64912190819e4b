"""``<python> boot.py default_worker.py <args>``: the command the plugin gives workers.

The work is in ``ray_numa_boot`` beside this file (found through the script's own
directory, ``sys.path[0]``): a module loads from bytecode, while a script's source is
parsed and compiled in every worker (about 5 million instructions, ~1.5 ms, when the
whole bootstrap was the script). ``run_path`` is called here, at module level: called
from inside a function, the same worker took 800 to 950 more minor page faults (measured with
``getrusage`` in real Ray workers; a runpy-only wrapper takes none either way).
"""
import runpy

from ray_numa_boot import prepare

runpy.run_path(prepare(), run_name="__main__")
