"""torchrun / Slurm / vLLM external_launcher: processes Ray did not start.

Either wrap the command:

    torchrun --nproc-per-node 8 --no-python ray-numa exec -- python train.py

or bind first thing in the script:

    import ray_numa; ray_numa.bind_current_process()   # GPU = cuda:$LOCAL_RANK

This script plays torchrun: it starts two local ranks with a remapped
CUDA_VISIBLE_DEVICES="6,1" through `ray-numa exec` and each rank prints what it got.

    python examples/torchrun_launcher.py --fixture dgx-h100
"""
import json
import os
import subprocess
import sys

from _common import ROOT, arguments, use_fixture

args = arguments(__doc__)
if args.fixture:
    use_fixture(args.fixture)
RANK = ("import json, os, ray_numa;"
        "print(json.dumps({'rank': os.environ['LOCAL_RANK'], 'affinity': len(os.sched_getaffinity(0)),"
        " **ray_numa.current_binding().as_dict()}))")
procs = []
for rank in range(2):
    env = dict(os.environ, LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", RANK=str(rank),
               CUDA_VISIBLE_DEVICES="6,1", PYTHONPATH=str(ROOT))
    # ray-numa exec binds, then execs the rank; here the rank reports its binding
    code = f"from ray_numa import bind_current_process; bind_current_process(); {RANK}"
    procs.append(subprocess.Popen([sys.executable, "-c", code], env=env,
                                  stdout=subprocess.PIPE, text=True))
for p in procs:
    r = json.loads(p.communicate()[0].strip().splitlines()[-1])
    print(f"rank {r['rank']} (cuda:{r['rank']} = GPU {r['gpus'] or '?'}): "
          f"{r['status']} - {r['reason']}")
