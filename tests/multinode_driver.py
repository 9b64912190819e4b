"""Driver for tests/test_ray_multinode.py, run as its own process.

Ray 2.60 cannot start a ``ray.cluster_utils.Cluster`` in a process that already ran
and shut down another local cluster (actors die "before they started running"), so
the multi-node scenario gets a fresh interpreter. Prints one JSON line of results.
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import ray_numa  # noqa: E402
from ray_numa.audit import run_audit  # noqa: E402
from ray_numa.cluster import PluginNotEnabled, plugin_status  # noqa: E402
from ray_numa.plugin import plugin_env  # noqa: E402
from tests.inspect_proc import inspect  # noqa: E402


def main(dgx_tree: str, amd_tree: str) -> dict:
    ray_numa.register()       # driver-side validation; nodes get the env explicitly
    # the dashboard serves Ray's state API, which tells `audit` each worker's GPUs
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": True})
    for tree, label in ((dgx_tree, "dgx"), (amd_tree, "amd")):
        cluster.add_node(num_cpus=4, num_gpus=8, resources={label: 100},
                         env_vars=dict(plugin_env(), RAY_NUMA_FIXTURE=tree))
    cluster.add_node(num_cpus=2, num_gpus=2, resources={"plain": 100},
                     env_vars={"RAY_RUNTIME_ENV_PLUGINS": "", "RAY_NUMA_FIXTURE": dgx_tree})
    ray.init(address=cluster.address)
    try:
        @ray.remote(num_gpus=1, runtime_env={"numa_bind": "auto"})
        class Model:
            def inspect(self):
                return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

        out, keep = {}, []      # keep every actor alive for the audit
        for label, count in (("dgx", 2), ("amd", 2), ("plain", 1)):
            actors = [Model.options(resources={label: 1}).remote() for _ in range(count)]
            keep += actors
            out[label] = ray.get([a.inspect.remote() for a in actors], timeout=300)
        out["status"] = plugin_status()
        out["plain_node"] = [n["NodeID"] for n in ray.nodes()
                             if n["Alive"] and "plain" in n["Resources"]]
        try:
            ray_numa.check_cluster()
            out["check_cluster"] = "passed"
        except PluginNotEnabled as exc:
            out["check_cluster"] = str(exc)
        out["audit"] = run_audit(min_local=50)
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], sys.argv[2])))
