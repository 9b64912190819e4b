"""A Serve app whose replicas report where ray-numa bound them (config.yaml)."""
import os

import ray
from ray import serve

import ray_numa


@serve.deployment
class Embedder:
    def __call__(self, request=None):
        b = ray_numa.current_binding()
        return {"pid": os.getpid(), "gpus": [str(g) for g in ray.get_gpu_ids()],
                "status": b.status, "cpus": b.cpus, "memory": b.memory,
                "mem_nodes": list(b.mem_nodes), "reason": b.reason}


app = Embedder.bind()
