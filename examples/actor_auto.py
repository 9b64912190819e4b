"""Main example: GPU actors pinned to their GPU's NUMA node with one line.

    python examples/actor_auto.py                      # this machine
    python examples/actor_auto.py --fixture dgx-h100   # as if on a DGX H100

On a GPU server each actor is bound for real. On a machine without GPUs Ray is
given fake GPUs: alone, the actors start unbound and say why; with ``--fixture``
they resolve their GPU on a copy of a real server's topology (tests/fixtures) and
report the plan they recorded instead of applying it.
"""
import os
import sys

from _common import arguments, start_ray

import ray_numa

ray = start_ray(arguments(__doc__))


@ray.remote(num_gpus=1, runtime_env={"numa_bind": "auto"})
class Model:
    def where(self):
        b = ray_numa.current_binding()
        return {"pid": os.getpid(), "gpu": ray.get_gpu_ids(), "status": b.status,
                "via": b.backend,
                "cpus": b.cpus, "memory": f"{b.memory} {list(b.mem_nodes)}",
                "why": b.reason, "affinity_now": len(os.sched_getaffinity(0))}


models = [Model.remote() for _ in range(int(ray.available_resources().get("GPU", 0)))]
for info in ray.get([m.where.remote() for m in models]):
    print(f"actor pid {info['pid']} GPU {info['gpu']}: {info['status']} - {info['why']}")
    if info["status"] == "bound":
        how = "recorded, fixture machine" if info["via"] == "record" else f"via {info['via']}"
        print(f"    CPUs {info['cpus']}, memory {info['memory']} ({how})")
try:
    Model.options(runtime_env={"numa_bind": "nearest"}).remote()
except ray_numa.OptionsError as exc:
    print(f"bad value rejected at .remote(): {exc}")
ray.shutdown()
sys.exit(0 if models else 1)
