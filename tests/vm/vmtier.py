"""Boot a stock Debian kernel with several NUMA nodes under QEMU (TCG) and run a
command in it, against this machine's own root filesystem (read-only over 9p).

The kernel package is downloaded once with ``apt-get download`` and cached with the
initramfs under ``$RAY_NUMA_VM_CACHE`` (default ``~/.cache/ray-numa/vm``). One boot
takes seconds; batch checks into few boots.

Layouts (the guest renumbers nodes, so tests read the guest's sysfs):
* ``two-node``: CPU 0 + 1 GiB on node 0, CPU 1 + 1 GiB on node 1, and a PCI function
  (e1000e, standing in for a GPU) on node 1 at 0000:81:00.0; two virtio-net functions,
  0000:82:00.0 on the same host bridge and 0000:41:00.0 on node 0's, for software RoCE.
* ``four-node``: nodes with CPU+memory (0, 1), a CPU-less node with memory, and a
  memory-less node with two CPUs.

The host root is exported twice: plain (the guest's /, always current) and with
``cache=loose`` (read-only, so nothing goes stale during a boot). The loose view is bound
over the trees Python reads -- /usr, the interpreter's prefixes and this checkout -- which
makes the guest's ``import ray`` about 2x and Python's start about 4x faster. Those trees
are bound at their own paths, so a venv or a clone under /tmp (hidden by the guest's
fresh tmpfs) works like any other.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).parent
REPO = HERE.parents[1]          # this checkout, shared with the guest at the same path
# Loaded in this order (virtio_ring before virtio, 9pnet before 9p).
# Then virtio-net and software RoCE (rdma_rxe needs the crc32 shash: ENOENT without it).
MODULES = ["virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "9pnet", "9pnet_virtio", "netfs", "fscache", "9p",
           "failover", "net_failover", "virtio_net", "crc32_generic", "ib_core", "ib_uverbs",
           "udp_tunnel", "ip6_udp_tunnel", "rdma_rxe"]
PCI_ON_NODE1 = ["-nic", "none", "-device", "pxb-pcie,id=pxb1,bus_nr=128,numa_node=1,bus=pcie.0",
                "-device", "pcie-root-port,id=rp1,bus=pxb1,chassis=1",
                "-device", "e1000e,bus=rp1"]
GPU_STANDIN_BUS = "0000:81:00.0"
# Two virtio-net functions (no backend: link up, nothing sent), for tests/vm/soft_roce.py's
# rxe devices: 0000:82:00.0 beside the GPU stand-in on node 1's host bridge (PHB), and
# 0000:41:00.0 on a host bridge of node 0 (SYS from the GPU).
NICS = ["-device", "pcie-root-port,id=rp2,bus=pxb1,chassis=2", "-device", "virtio-net-pci,bus=rp2",
        "-device", "pxb-pcie,id=pxb0,bus_nr=64,numa_node=0,bus=pcie.0",
        "-device", "pcie-root-port,id=rp0,bus=pxb0,chassis=3", "-device", "virtio-net-pci,bus=rp0"]


def _mem(i: int, size: str) -> List[str]:
    return ["-object", f"memory-backend-ram,id=m{i},size={size}"]


LAYOUTS: Dict[str, List[str]] = {
    "two-node": ["-smp", "2", "-m", "2G", *_mem(0, "1G"), *_mem(1, "1G"),
                 "-numa", "node,nodeid=0,cpus=0,memdev=m0",
                 "-numa", "node,nodeid=1,cpus=1,memdev=m1", *PCI_ON_NODE1, *NICS],
    "four-node": ["-smp", "4", "-m", "1536M", *_mem(0, "512M"), *_mem(1, "512M"),
                  *_mem(2, "512M"),
                  "-numa", "node,nodeid=0,cpus=0,memdev=m0",
                  "-numa", "node,nodeid=1,cpus=1,memdev=m1",
                  "-numa", "node,nodeid=2,memdev=m2",
                  "-numa", "node,nodeid=3,cpus=2-3",
                  "-numa", "dist,src=0,dst=1,val=20", "-numa", "dist,src=0,dst=2,val=15",
                  "-numa", "dist,src=0,dst=3,val=30", "-numa", "dist,src=1,dst=2,val=25",
                  "-numa", "dist,src=1,dst=3,val=18", "-numa", "dist,src=2,dst=3,val=30",
                  "-nic", "none"],
}


class VMUnavailable(RuntimeError):
    """QEMU, busybox or the kernel package cannot be had here."""


def shared_trees() -> List[str]:
    """Host trees the guest sees at their own paths through the loose-cache export:
    /usr, the running interpreter's prefixes (a venv and its base) and this checkout,
    outermost only."""
    trees = sorted({os.path.realpath(p) for p in
                    ("/usr", sys.prefix, sys.base_prefix, sys.exec_prefix, REPO)})
    out: List[str] = []
    for tree in trees:
        if any(s in tree for s in (" ", ":", "\t")):
            raise VMUnavailable(f"cannot share {tree!r} with the guest: space or colon in it")
        if not any(tree == kept or tree.startswith(kept + "/") for kept in out):
            out.append(tree)
    return [t for t in out if t != "/"]


@dataclasses.dataclass
class Result:
    rc: int
    output: str
    console: str


def cache_dir() -> Path:
    return Path(os.environ.get("RAY_NUMA_VM_CACHE", Path.home() / ".cache/ray-numa/vm"))


def missing_tools() -> List[str]:
    need = {"qemu-system-x86_64": "qemu-system-x86", "apt-get": "apt", "dpkg-deb": "dpkg",
            "rdma": "iproute2"}
    out = [pkg for tool, pkg in need.items() if shutil.which(tool) is None]
    if not Path("/bin/busybox").exists():
        out.append("busybox-static")
    return out


def _kernel_package() -> str:
    deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True,
                          text=True).stdout
    for line in deps.splitlines():
        if "Depends:" in line and "linux-image-" in line:
            return line.split("Depends:")[1].strip()
    raise VMUnavailable("apt-cache knows no linux-image-amd64 (run apt-get update)")


def kernel() -> Path:
    """The cached kernel root (``boot/vmlinuz-*`` and its modules)."""
    root = cache_dir() / "kroot"
    if list(root.glob("boot/vmlinuz-*")):
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        pkg = _kernel_package()
        got = subprocess.run(["apt-get", "download", pkg], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise VMUnavailable(f"apt-get download {pkg} failed: {got.stderr.strip()}")
        staging = Path(tmp) / "kroot"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(staging)], check=True)
        shutil.move(str(staging), root)
    return root


def _cpio_newc(entries: List[tuple]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as initramfs); no cpio binary needed."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(b"%08x" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def initramfs() -> Path:
    """The cached initramfs for this init.sh and module list (a change to either, or to
    the kernel, makes another; stale ones are removed)."""
    kroot = kernel()
    key = hashlib.sha256((HERE / "init.sh").read_bytes() + "\n".join(
        MODULES + [str(next(kroot.glob("boot/vmlinuz-*")))]).encode()).hexdigest()[:12]
    target = cache_dir() / f"initrd-{key}.gz"
    if target.exists():
        return target
    for stale in cache_dir().glob("initrd*.gz"):
        stale.unlink()
    moddir = next((kroot / "lib/modules").iterdir())
    entries = [(d, 0o40755, b"") for d in ("bin", "mods", "host", "loose", "proc", "sys",
                                                   "dev", "tmp")]
    entries.append(("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()))
    entries.append(("init", 0o100755, (HERE / "init.sh").read_bytes()))
    for name in MODULES:
        found = next(moddir.rglob(f"{name}.ko"), None)
        if found is None:
            raise VMUnavailable(f"module {name}.ko not in {moddir}")
        entries.append((f"mods/{name}.ko", 0o100644, found.read_bytes()))
    entries.append(("mods/order", 0o100644, "\n".join(MODULES).encode() + b"\n"))
    target.write_bytes(gzip.compress(_cpio_newc(entries), 6))
    return target


def boot(layout: str, script: str, timeout: float = 540) -> Result:
    """Boot ``layout`` and run ``script`` (sh) inside; returns its rc and output.

    Past ``timeout`` QEMU is killed and the result has rc -1 with what the guest wrote.
    """
    kroot = kernel()
    vmlinuz = next(kroot.glob("boot/vmlinuz-*"))
    initrd = initramfs()
    with tempfile.TemporaryDirectory(prefix="ray-numa-vm-") as xfer:
        Path(xfer, "cmd.sh").write_text(script)
        cmd = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-cpu", "max",
               "-kernel", str(vmlinuz), "-initrd", str(initrd),
               "-append", "console=ttyS0 quiet panic=-1 "
                          f"ray_numa_share={':'.join(shared_trees())}",
               "-nographic", "-no-reboot",
               "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
                          "multidevs=remap",
               "-virtfs", f"local,path={xfer},mount_tag=xfer,security_model=none",
               "-virtfs", "local,path=/,mount_tag=hostloose,security_model=none,readonly=on,"
                          "multidevs=remap",
               *LAYOUTS[layout]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
            console = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            console = _text(exc.stdout) + _text(exc.stderr) + f"\nQEMU KILLED after {timeout} s"
        out_file = Path(xfer, "out.txt")
        output = out_file.read_text(errors="replace") if out_file.exists() else ""
    rc_line = [l for l in output.splitlines() if l.startswith("CMD_RC=")]
    rc = int(rc_line[-1].split("=")[1]) if rc_line else -1
    return Result(rc=rc, output=output, console=console)


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")
