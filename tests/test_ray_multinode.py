"""Several raylets on this machine (ray.cluster_utils.Cluster), each a different
machine through its own RAY_NUMA_FIXTURE, and one started without the plugin."""
import pytest

from ray_numa.plugin import plugin_env
from tests.inspect_proc import inspect

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(machine_tree):
    import ray
    from ray.cluster_utils import Cluster

    import ray_numa
    ray_numa.register()       # driver-side validation; nodes get the env explicitly
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    with_plugin = plugin_env()
    for name, label in (("dgx-h100", "dgx"), ("amd-nps4", "amd")):
        cluster.add_node(num_cpus=4, num_gpus=8, resources={label: 100},
                         env_vars=dict(with_plugin, RAY_NUMA_FIXTURE=str(machine_tree(name))))
    cluster.add_node(num_cpus=2, num_gpus=2, resources={"plain": 100},
                     env_vars={"RAY_RUNTIME_ENV_PLUGINS": "", "RAY_NUMA_FIXTURE":
                               str(machine_tree("dgx-h100"))})
    ray.init(address=cluster.address)
    yield ray, cluster
    ray.shutdown()
    cluster.shutdown()


def test_each_node_binds_by_its_own_topology(cluster):
    ray, _ = cluster

    @ray.remote(num_gpus=1, runtime_env={"numa_bind": "auto"})
    class Model:
        def inspect(self):
            return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()])

    dgx = [Model.options(resources={"dgx": 1}).remote() for _ in range(2)]
    amd = [Model.options(resources={"amd": 1}).remote() for _ in range(2)]
    for r in ray.get([a.inspect.remote() for a in dgx], timeout=300):
        gpu = int(r["gpu_ids"][0])
        assert r["binding"]["cpus"] == ("0-55,112-167" if gpu < 4 else "56-111,168-223")
    nps4_nodes = [1, 0, 3, 2, 5, 4, 7, 6]          # GPU i sits on NPS4 node nps4_nodes[i]
    for r in ray.get([a.inspect.remote() for a in amd], timeout=300):
        node = nps4_nodes[int(r["gpu_ids"][0])]
        assert r["binding"]["mem_nodes"] == [node]
        assert r["binding"]["cpus"].startswith(f"{24 * node}-{24 * node + 23},")
    for a in dgx + amd:
        ray.kill(a)


def test_a_node_without_the_plugin_is_named_not_silently_ignored(cluster):
    ray, _ = cluster
    import ray_numa
    from ray_numa.cluster import PluginNotEnabled

    status = ray_numa.cluster.plugin_status()
    plain = [n for n in ray.nodes() if n["Alive"] and "plain" in n["Resources"]][0]["NodeID"]
    assert [n for n, ok in status.items() if not ok] == [plain]
    with pytest.raises(PluginNotEnabled, match=plain):
        ray_numa.check_cluster()

    @ray.remote(num_gpus=1, resources={"plain": 1}, runtime_env={"numa_bind": "auto"})
    class Model:
        def inspect(self):
            return inspect()

    r = ray.get(Model.remote().inspect.remote(), timeout=300)
    assert r["binding"]["status"] == "unbound"
    assert "plugin is not enabled on this node" in r["binding"]["reason"]
