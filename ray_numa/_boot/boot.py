"""``<python> boot.py default_worker.py <args>``: the command the plugin gives workers.

The work is in ``ray_numa_boot`` beside this file (found through the script's own
directory, ``sys.path[0]``): a module loads from bytecode, while a script's source is
parsed and compiled in every worker, which cost about 5 million instructions
(~1.5 ms) per worker when the whole bootstrap was the script.
"""
from ray_numa_boot import main

main()
