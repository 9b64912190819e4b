"""Run in the VM tier's guest before its tests: a software RoCE device (the kernel's
rdma_rxe, loaded by the initramfs) over each Ethernet function, named by the function's
NUMA node (``rxe_n0``, ``rxe_n1``), with iproute2's ``ip`` and ``rdma``.

The two-node layout has a virtio-net function beside the GPU stand-in on node 1's host
bridge and one on node 0's (:data:`tests.vm.vmtier.NICS`); the four-node one has none,
and this does nothing there. Prints ``VM_RDMA ...`` lines; exits non-zero if a device
cannot be made or its port does not come up (the NIC tests then fail on their own).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

NET = Path("/sys/class/net")
IB = Path("/sys/class/infiniband")


def ethernet_functions():
    """(netdev, PCI function, NUMA node) for every netdev with a PCI function behind it."""
    for netdev in sorted(os.listdir(NET)):
        parts = os.path.realpath(NET / netdev / "device").split("/")
        bdf = next((p for p in reversed(parts) if p.count(":") == 2 and "." in p), None)
        if bdf:
            node = Path(f"/sys/bus/pci/devices/{bdf}/numa_node").read_text().strip()
            yield netdev, bdf, int(node)


def main() -> int:
    rc = 0
    for netdev, bdf, node in ethernet_functions():
        name = f"rxe_n{node}"
        for cmd in (["ip", "link", "set", "dev", netdev, "up"],
                    ["rdma", "link", "add", name, "type", "rxe", "netdev", netdev]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"VM_RDMA {' '.join(cmd)} failed: {done.stderr.strip()}")
                rc = 1
        state = IB / name / "ports/1/state"
        for _ in range(50):              # the port is ACTIVE once the link has carrier
            if state.exists() and "ACTIVE" in state.read_text():
                break
            time.sleep(0.1)
        print(f"VM_RDMA {name} over {netdev} ({bdf}, node {node}): "
              f"{state.read_text().strip() if state.exists() else 'no port'}")
        rc |= 0 if state.exists() and "ACTIVE" in state.read_text() else 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
