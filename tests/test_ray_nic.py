"""A real local Ray cluster seen as a DGX H100 with its NICs (fixture ``dgx-h100-net``):
``numa_bind: {"nic": "auto"}`` puts each GPU actor's own NIC in its environment
before ``__init__`` runs; a CPU-only actor's environment is untouched; a job's own
value is kept, and the audit reads it from the worker's real /proc/<pid>/environ."""
import os

import pytest

from conftest import ray_cluster
from ray_numa.audit import examine
from tests.inspect_proc import inspect

pytestmark = pytest.mark.ray
VARS = ("UCX_NET_DEVICES", "NVSHMEM_HCA_LIST", "UCCL_P2P_RDMA_DEV", "NCCL_IB_HCA")
#: DGX H100 User Guide, Table 6: GPU -> its default compute NIC
H100_NIC = ["mlx5_0", "mlx5_3", "mlx5_4", "mlx5_5", "mlx5_6", "mlx5_9", "mlx5_10", "mlx5_11"]


def test_gpu_actors_get_their_nic_and_cpu_actors_do_not(machine_tree):
    with ray_cluster(fixture_root=machine_tree("dgx-h100-net"), num_gpus=8) as ray:
        @ray.remote(num_gpus=1, runtime_env={"numa_bind": {"nic": "auto"}})
        class Model:
            def __init__(self):
                self.at_init = {k: os.environ.get(k) for k in VARS}

            def report(self):
                return inspect(gpu_ids=[str(g) for g in ray.get_gpu_ids()],
                               at_init=self.at_init)

        @ray.remote(num_gpus=0, runtime_env={"numa_bind": {"nic": "auto"}})
        class Cpu:
            def report(self):
                return inspect(at_init={k: os.environ.get(k) for k in VARS})

        job_value = Model.options(runtime_env={
            "numa_bind": {"nic": "auto"}, "env_vars": {"UCX_NET_DEVICES": "all"}})
        actors = [Model.remote() for _ in range(3)] + [job_value.remote(), Cpu.remote()]
        reports = ray.get([a.report.remote() for a in actors], timeout=300)
        for r in reports[:3]:
            nic = H100_NIC[int(r["gpu_ids"][0])]
            assert r["at_init"] == {"UCX_NET_DEVICES": f"{nic}:1",
                                    "NVSHMEM_HCA_LIST": f"{nic}:1",
                                    "UCCL_P2P_RDMA_DEV": nic, "NCCL_IB_HCA": None}
            assert r["binding"]["nic"] == [f"{nic}:1"] and r["binding"]["nic_path"] == "PIX"
        kept = reports[3]
        nic = H100_NIC[int(kept["gpu_ids"][0])]
        assert kept["at_init"]["UCX_NET_DEVICES"] == "all"
        assert kept["at_init"]["NVSHMEM_HCA_LIST"] == f"{nic}:1"
        cpu = reports[4]
        assert cpu["at_init"] == dict.fromkeys(VARS)
        assert cpu["binding"]["nic"] == [] and cpu["binding"]["status"] != "bound"
        # the audit's examination of those worker processes (their ledger records,
        # their /proc/<pid>/environ), as its probe runs it on the node
        assert examine(reports[0]["pid"], True)["nic_warnings"] == []
        [warning] = examine(kept["pid"], True)["nic_warnings"]
        assert "UCX_NET_DEVICES=all on a node with 10 RDMA NICs" in warning
        assert examine(cpu["pid"], True)["nic_warnings"] == []
