"""Ray Serve: `numa_bind` in a deployment's ray_actor_options.

    python examples/serve_deployment.py --fixture dgx-h100
    cd examples && serve run serve_config/config.yaml   # the same from a config file
"""
from _common import arguments, start_ray

args = arguments(__doc__)
ray = start_ray(args)
from ray import serve  # noqa: E402

from serve_config.app import Embedder  # noqa: E402

serve.start(http_options={"host": "127.0.0.1", "port": 0})
app = Embedder.options(num_replicas=2, ray_actor_options={
    "num_gpus": 1, "num_cpus": 0, "runtime_env": {"numa_bind": "auto"}}).bind()
handle = serve.run(app, name="embedder", route_prefix=None)
seen = {}
for _ in range(50):
    r = handle.remote().result(timeout_s=120)
    seen[r["pid"]] = r
    if len(seen) == 2:
        break
for r in seen.values():
    print(f"replica pid {r['pid']} GPU {r['gpus']}: {r['status']} - {r['reason']}")
serve.shutdown()
ray.shutdown()
