"""Shared by the examples: optionally pretend to be a fixture machine, start Ray."""
import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def arguments(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--fixture", help="a machine from tests/fixtures/machines.py, e.g. dgx-h100")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs to give Ray")
    return ap.parse_args()


def use_fixture(name: str) -> int:
    """Point ray-numa (and Ray started later) at a fixture machine; returns its GPU count."""
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.build import build
    from tests.fixtures.machines import MACHINES
    tree = build(name, Path(tempfile.mkdtemp(prefix="ray-numa-fixture-")))
    os.environ["RAY_NUMA_FIXTURE"] = str(tree)
    return len(MACHINES[name]["gpus"])


def start_ray(args: argparse.Namespace, runtime_env=None):
    import ray

    import ray_numa
    gpus = args.gpus
    if args.fixture:
        gpus = gpus or use_fixture(args.fixture)
    print(f"=== {Path(sys.argv[0]).name}: " + (
        f"on a {args.fixture} fixture machine (plans recorded, not applied) ==="
        if args.fixture else "on this machine ==="), flush=True)
    ray_numa.register()        # before ray.init: enables the numa_bind plugin
    # workers import the repository's helpers (tests.standins, serve_config)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "examples"),
                                                os.environ.get("PYTHONPATH", "")])
    ray.init(address="local", num_cpus=16, num_gpus=gpus if gpus is not None else 2,
             include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    return ray
