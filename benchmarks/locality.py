"""Page locality of a 256 MiB buffer: run inside a multi-node kernel (the VM tier).

Prints one JSON line: the share of the buffer's pages on the GPU stand-in's node for
an unbound process, a process bound before allocating, and an in-process bind after
allocating, with and without migration. Each case is a fresh child process.
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.procs import child_report  # noqa: E402

NODE = 1
CASES = {
    "unbound": "buf, addr = touch_buffer(256)\nreport(pages=node_pages(addr))",
    "bound before touch": ("from ray_numa import bind_current_process\n"
                           "bind_current_process(gpu=0)\n"
                           "buf, addr = touch_buffer(256)\nreport(pages=node_pages(addr))"),
    "bound after touch, migrate": (
        "from ray_numa import bind_current_process, syscalls\n"
        "syscalls.set_mempolicy('bind', [0])\nbuf, addr = touch_buffer(256)\n"
        "bind_current_process(gpu=0)\nreport(pages=node_pages(addr))"),
    "bound after touch, no migrate": (
        "from ray_numa import bind_current_process, syscalls\n"
        "syscalls.set_mempolicy('bind', [0])\nbuf, addr = touch_buffer(256)\n"
        "bind_current_process(gpu=0, options={'migrate': False})\n"
        "report(pages=node_pages(addr))"),
}


def main():
    root = Path(tempfile.mkdtemp())
    (root / "nvml.json").write_text(json.dumps({"devices": [
        {"uuid": "GPU-0f0f0f0f-0000-0000-0000-000000000001", "name": "stand-in",
         "bus_id": "00000000:81:00.0", "compute_capability": [9, 0]}]}))
    out = {}
    for name, code in CASES.items():
        pages = child_report(code, env={"RAY_NUMA_FIXTURE": str(root)})["pages"]
        total = sum(pages.values())
        out[name] = round(100.0 * pages.get(str(NODE), 0) / total, 2) if total else None
    print("LOCALITY " + json.dumps(out))


if __name__ == "__main__":
    main()
