"""What a process really has, read from the kernel: imported by test children and
by actors inside Ray workers."""
from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Dict


def status_field(name: str, pid: str = "self") -> str:
    text = open(f"/proc/{pid}/status").read()
    return re.search(rf"^{name}:\s*(\S*)", text, re.M).group(1)


def thread_cpus() -> list:
    """Distinct Cpus_allowed_list values over every thread of this process."""
    return sorted({status_field("Cpus_allowed_list", f"self/task/{t}")
                   for t in os.listdir("/proc/self/task")})


def numactl_show() -> Dict[str, str]:
    out = subprocess.run(["numactl", "--show"], capture_output=True, text=True).stdout
    return {k.strip(): v.strip() for k, v in
            (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def inspect(**extra) -> Dict:
    from ray_numa import current_binding, syscalls
    data = {"pid": os.getpid(), "affinity": sorted(os.sched_getaffinity(0)),
            "thread_cpus": thread_cpus(),
            "cpus_allowed": status_field("Cpus_allowed_list"),
            "mems_allowed": status_field("Mems_allowed_list"),
            "mempolicy": list(syscalls.get_mempolicy()),
            "binding": current_binding().as_dict(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    data.update(extra)
    return json.loads(json.dumps(data, default=str))


def report(**extra) -> None:
    print(json.dumps(inspect(**extra), default=str))
