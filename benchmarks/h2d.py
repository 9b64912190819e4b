"""Pinned host-to-device bandwidth to GPU 0: bound to its node, to the farthest other
node, and unbound; each a fresh process that binds before allocating its buffer.

Run as a child: ``python benchmarks/h2d.py gpu|far|unbound`` prints one JSON line.
Needs torch with a CUDA device; :func:`rows` says "n/a" otherwise.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]
MODES = ("gpu", "far", "unbound")


def _bind(mode: str) -> str:
    from ray_numa import bind_current_process
    from ray_numa.planning import plan_for
    from ray_numa.options import parse
    from ray_numa.topology import machine_topology
    if mode == "unbound":
        return "unbound"
    if mode == "gpu":
        return bind_current_process(gpu=0).reason
    near = plan_for(parse("auto"), ["0"])
    gpu_node = near.cpu_nodes[0] if hasattr(near, "cpu_nodes") else 0
    topo = machine_topology()
    others = [n for n in topo.nodes.values() if n.id != gpu_node and n.cpus and n.mem_kb]
    if not others:
        raise SystemExit(json.dumps({"error": "one NUMA node with CPUs and memory"}))
    far = max(others, key=lambda n: topo.distance(gpu_node, n.id))
    return bind_current_process(node=far.id).reason


def _measure(mode: str) -> dict:
    import torch
    reason = _bind(mode)
    x = torch.empty(256 << 20, dtype=torch.uint8).pin_memory()
    y = torch.empty_like(x, device="cuda")
    for _ in range(3):
        y.copy_(x, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        y.copy_(x, non_blocking=True)
    torch.cuda.synchronize()
    return {"gbps": 20 * x.numel() / (time.perf_counter() - t0) / 1e9, "binding": reason}


def rows() -> List[Tuple[str, str, str, str, str]]:
    try:
        import torch
    except ImportError:
        return [("pinned H2D bandwidth", "-", "n/a", "", "torch not installed")]
    if not torch.cuda.is_available():
        return [("pinned H2D bandwidth", "-", "n/a", "", "no CUDA GPU")]
    found = {}
    for _ in range(3):              # rounds alternate the modes; best of each
        for mode in MODES:
            out = subprocess.run([sys.executable, __file__, mode], capture_output=True,
                                 text=True, cwd=ROOT).stdout.strip().splitlines()
            data = json.loads(out[-1]) if out else {"error": "no output"}
            if "error" in data:
                found.setdefault(mode, data)
            elif data["gbps"] > found.get(mode, {}).get("gbps", 0):
                found[mode] = data
    best = max(d.get("gbps", 0) for d in found.values())
    out_rows = []
    for mode in MODES:
        d = found[mode]
        if "error" in d:
            out_rows.append((f"pinned H2D to GPU 0, {mode}", "this GPU machine", "n/a", "",
                             d["error"]))
            continue
        ok = d["gbps"] >= 0.97 * best
        out_rows.append((f"pinned H2D to GPU 0, {mode} ({d['binding']})", "this GPU machine",
                         f"{d['gbps']:.1f} GB/s",
                         ">= 97 % of the best" if mode == "gpu" else "",
                         ("PASS" if ok else "FAIL") if mode == "gpu" else ""))
    return out_rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(_measure(sys.argv[1])))
