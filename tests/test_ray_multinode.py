"""Several raylets on this machine (ray.cluster_utils.Cluster), each a different
machine through its own RAY_NUMA_FIXTURE, and one started without the plugin.
The cluster runs in its own driver process (see tests/multinode_driver.py)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray
DRIVER = Path(__file__).with_name("multinode_driver.py")


@pytest.fixture(scope="module")
def results(machine_tree):
    proc = subprocess.run([sys.executable, str(DRIVER), str(machine_tree("dgx-h100")),
                           str(machine_tree("amd-nps4"))], capture_output=True, text=True,
                          timeout=600)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line, proc.stderr[-4000:]
    return json.loads(line[len("RESULT "):])


def test_each_node_binds_by_its_own_topology(results):
    for r in results["dgx"]:
        gpu = int(r["gpu_ids"][0])
        assert r["binding"]["cpus"] == ("0-55,112-167" if gpu < 4 else "56-111,168-223")
    nps4_nodes = [1, 0, 3, 2, 5, 4, 7, 6]          # GPU i sits on NPS4 node nps4_nodes[i]
    for r in results["amd"]:
        node = nps4_nodes[int(r["gpu_ids"][0])]
        assert r["binding"]["mem_nodes"] == [node]
        assert r["binding"]["cpus"].startswith(f"{24 * node}-{24 * node + 23},")


def test_a_node_without_the_plugin_is_named_not_silently_ignored(results):
    [plain] = results["plain_node"]
    assert [n for n, ok in results["status"].items() if not ok] == [plain]
    assert results["check_cluster"].startswith(
        f"the ray-numa plugin is not enabled on node(s) {plain}")
    [r] = results["plain"]
    assert r["binding"]["status"] == "unbound"
    assert "plugin is not enabled on this node" in r["binding"]["reason"]


def test_audit_shows_each_node_including_the_one_without_the_plugin(results):
    from ray_numa.audit import NO_PLUGIN
    audit = results["audit"]
    by_node = {n["node"]: n for n in audit["nodes"]}
    rows = {r["pid"]: r for n in audit["nodes"] for r in n["rows"]}
    [plain_node] = results["plain_node"]
    assert by_node[plain_node]["plugin"] is False and not audit["ok"]
    assert [n for n, v in by_node.items() if not v["plugin"]] == [plain_node]
    [plain] = results["plain"]
    row = rows[plain["pid"]]
    assert row["node"] == plain_node and row["gpus"] == 1
    assert row["binding"] == {"status": "unbound", "reason": NO_PLUGIN}
    assert row["flags"] == ["unbound GPU worker"]
    for r in results["dgx"] + results["amd"]:
        row = rows[r["pid"]]
        assert row["binding"]["status"] == "bound" and row["node"] != plain_node
        assert row["binding"]["mem_nodes"] == r["binding"]["mem_nodes"]
        # recorded on a fixture, so the pages stay where this one-node host put them
        local = 100.0 if r["binding"]["mem_nodes"] == [0] else 0.0
        assert row["local_pct"] == local
        assert row["flags"] == ([] if local else ["local memory 0% < 50%"])
