"""vLLM on Ray: bind the GPU workers vLLM creates, with a job-level runtime_env.

With vLLM installed, the whole change is the runtime_env of the job:

    ray.init(runtime_env={"numa_bind": "auto"})
    llm = vllm.LLM(model, tensor_parallel_size=8, distributed_executor_backend="ray")

(or `ray job submit --runtime-env-json '{"numa_bind": "auto"}' -- python serve.py`).
This script runs the same Ray calls vLLM's executor makes (a placement group of
{"GPU": 1} bundles, one worker actor per bundle, CUDA_VISIBLE_DEVICES rewritten to
all of the node's GPUs) so it works without vLLM or a GPU:

    python examples/vllm_on_ray.py --fixture dgx-h100
"""
import sys

from _common import ROOT, arguments, start_ray

args = arguments(__doc__)
ray = start_ray(args, runtime_env={"numa_bind": "auto"})
sys.path.insert(0, str(ROOT))
from tests.standins import vllm_ray_executor  # noqa: E402

world = int(ray.cluster_resources().get("GPU", 0))
pg, workers = vllm_ray_executor.start_workers(world_size=world)
for r in sorted(ray.get([w.inspect.remote() for w in workers]), key=lambda r: r["gpu_ids"]):
    b = r["binding"]
    print(f"worker for GPU {r['gpu_ids'][0]} (sees CUDA_VISIBLE_DEVICES="
          f"{r['cuda_visible_devices']}): {b['status']} - {b['reason']}")
engine = ray.remote(num_cpus=1)(vllm_ray_executor.EngineCore).remote()
print("CPU-only engine actor:", ray.get(engine.inspect.remote())["binding"]["status"])
vllm_ray_executor.stop_workers(pg, workers)
ray.shutdown()
