"""``<python> boot.py default_worker.py <args>``: the command the plugin gives workers.

The work is in ``ray_numa_boot`` beside this file (found through the script's own
directory, ``sys.path[0]``): a module loads from bytecode, while a script's source is
parsed and compiled in every worker (about 5 million instructions, ~1.5 ms, when the
whole bootstrap was the script). For the same reason Ray's ``default_worker.py`` runs
as its module, from Ray's bytecode (see ``module_of``); another script runs as Python
would run it. ``runpy`` is called here, at module level: ``run_path`` called from
inside a function took 800 to 950 more minor page faults in the same worker (measured
with ``getrusage`` in real Ray workers; a runpy-only wrapper takes none either way).
"""
import runpy

from ray_numa_boot import module_of, prepare

script = prepare()
module = module_of(script)
if module is None:
    runpy.run_path(script, run_name="__main__")
else:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
