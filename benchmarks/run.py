"""ray-numa benchmarks: one command, one markdown table, every pair measured side by
side in the same run.

    python benchmarks/run.py [--actors 4] [--rounds 18] [--no-vm] [--no-ray]

Two machines, both printed:
* **DGX H100 fixture** (224 CPUs, 2 nodes, 8 GPUs): topology and NVML come from the
  fixture tree, so every file read and every NVML call is that machine's; the binding
  is recorded, not applied (the CPUs do not exist here).
* **this machine's real kernel**: real sysfs, real syscalls (sched_setaffinity,
  set_mempolicy); only NVML is the fixture's fake (two GPUs placed on node 0).

Rows: files a worker's first bind opens (audit hook on "open": a count, noise-free)
and its wall time; the bootstrap's import cost (``-X importtime``); actors' creation
to first call with vs without numa_bind (GPU actors, and CPU-only actors under
job-level "auto"), median of per-round ratios over rounds whose order balances
place and predecessor (a Williams square) and give each side a fresh runtime_env,
with a distribution-free 95 % CI; the same
workers' main-thread instructions from exec to first call (callgrind: a count, so
noise-free; needs valgrind); nvmlInit calls per worker, counted by the fake NVML;
page locality in the 2-node VM; pinned H2D bandwidth where CUDA exists.
ray_numa's bytecode is compiled first, as ``pip install`` does.
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import costs  # noqa: E402
import h2d  # noqa: E402
import instructions  # noqa: E402
import start  # noqa: E402
from ray_numa import environment  # noqa: E402

Row = Tuple[str, str, str, str, str]    # measurement, where, value, target, result
DGX = "DGX H100 fixture"
HERE = f"real kernel ({os.cpu_count()} CPUs)"
NODE_MODE = "auto"                      # node mode, memory bind: the default


def _check(value: float, limit: float) -> str:
    return "PASS" if value <= limit else "FAIL"


def _fixtures() -> Tuple[Path, Path]:
    from tests.fixtures import nvml_only
    from tests.fixtures.build import build
    tmp = Path(tempfile.mkdtemp(prefix="ray-numa-bench-"))
    return build("dgx-h100", tmp / "dgx"), nvml_only.write(tmp / "nvml-only")


def bench_first_bind(dgx: Path, real: Path) -> List[Row]:
    """A worker's first bind, given what the agent hands it: the GPU table, and the
    plans it applies when assigned one GPU; "planning itself" is the path for several
    GPUs, a device it follows, or a process the plans do not hold for."""
    here_opts = {"cpus": sorted(os.sched_getaffinity(0))}   # one node here: explicit CPUs
    rows: List[Row] = []
    for where, fixture, options in ((DGX, dgx, NODE_MODE), (HERE, real, here_opts)):
        env = {environment.FIXTURE_ENV: str(fixture)}
        handed = dict(env, **costs.agent_env(env, options))
        planned = costs.first_bind(handed, options, ["0"])
        itself = costs.first_bind(dict(handed, **{environment.PLANS_ENV: ""}), options, ["0"])
        most = max(planned["opened"], itself["opened"])
        rows.append(("files opened by a worker's first bind, 1 GPU, node mode: with the "
                     "agent's plan / planning itself", where,
                     f"{planned['opened']} / {itself['opened']}", "<= 40", _check(most, 40)))
        rows.append(("  wall time of that bind (median of 5 processes)", where,
                     f"{planned['ms']:.1f} ms / {itself['ms']:.1f} ms ({planned['status']}, "
                     f"{itself['status']})", "", ""))
        for label, run in (("with the agent's plan", planned), ("planning itself", itself)):
            cpu_ms = run["cpu_ms"]
            rows.append((f"  CPU time ray_numa adds to a GPU worker, {label} (median of 5)",
                         where, f"{sum(cpu_ms.values()):.1f} ms = " + " + ".join(
                             f"{v:.1f} {k}" for k, v in cpu_ms.items()), "", ""))
    return rows


def bench_imports() -> List[Row]:
    cost = costs.boot_import_ms()
    return [("imports the bootstrap adds before default_worker.py (-X importtime, modules "
             "Ray's import loads excluded, median of 7)",
             "this interpreter", f"{cost['ms']:.1f} ms", "<= 15 ms",
             _check(cost["ms"], 15) + f"; heaviest: {cost['heaviest']}")]


def bench_start(dgx: Path, real: Path, actors: int, rounds: int) -> List[Row]:
    rows: List[Row] = []
    log = dgx.parent / "nvml-inits"
    os.environ[environment.FAKE_NVML_LOG_ENV] = str(log)
    # DGX: job-level "auto" (vLLM's case); "off" per actor is the without-side
    # and "off again", the same as "off": an A/A control, what noise alone prints
    gpu_off = start.Side(1, {"numa_bind": "off"}, wrapped=False, bound=False)
    cpu_off = start.Side(0, {"numa_bind": "off"}, wrapped=False, bound=False)
    sides = {"GPU auto": start.Side(1, {}, wrapped=True, bound=True),
             "GPU off": gpu_off, "GPU off again": gpu_off,
             "CPU auto": start.Side(0, {}, wrapped=True, bound=False),
             "CPU off": cpu_off, "CPU off again": cpu_off}
    t = start.run([("GPU auto", "GPU off"), ("CPU auto", "CPU off"),
                   ("GPU off again", "GPU off"), ("CPU off again", "CPU off")], sides, actors,
                  rounds, dgx, num_gpus=8, job_runtime_env={"numa_bind": "auto"})
    for kind, limit in (("GPU", 1.02), ("CPU", 1.01)):
        what = ("GPU actors (1 GPU each)" if kind == "GPU"
                else "CPU-only actors, job-level auto")
        rows += _start_rows(t, f"{kind} auto", f"{kind} off",
                            f"{actors} {what}, auto / off", DGX, limit)
    for kind in ("GPU", "CPU"):
        rows += _start_rows(t, f"{kind} off again", f"{kind} off",
                            f"A/A control: {actors} {kind} actors without numa_bind, "
                            "one batch / another (the instrument's noise alone)", DGX, None)
    rows += _nvml_rows(log, t.pids["GPU auto"], DGX)
    log.write_text("")
    opts = {"numa_bind": {"cpus": sorted(os.sched_getaffinity(0))}}
    sides = {"bound": start.Side(2 / actors, opts, wrapped=True, bound=True),
             "without": start.Side(2 / actors, {}, wrapped=False, bound=False)}
    t = start.run([("bound", "without")], sides, actors, rounds, real, num_gpus=2)
    rows += _start_rows(t, "bound", "without", f"{actors} GPU actors (fractional), "
                        "numa_bind via syscalls / without", HERE, 1.02)
    rows += _nvml_rows(log, t.pids["bound"], HERE)
    del os.environ[environment.FAKE_NVML_LOG_ENV]
    return rows


def _verdict(median: float, lo: float, hi: float, limit: float) -> str:
    """PASS/FAIL only when the whole 95 % CI is on one side of the limit: a median
    that passes while the CI reaches past the limit has not shown the target met."""
    verdict = _check(median, limit)
    if hi <= limit or lo > limit:
        return verdict
    return f"INCONCLUSIVE (the median would {verdict}; the 95 % CI spans {limit})"


def _start_rows(t: "start.Timings", side: str, base: str, what: str, where: str,
                limit: Optional[float]) -> List[Row]:
    """Wall and CPU ratio rows (and page faults); ``limit`` None: a control, no verdict."""
    wall, cpu = t.ratio(side, base), t.ratio(side, base, cpu=True)
    added = (t.median(side, cpu=True) - t.median(base, cpu=True)) * 1e3
    lo, hi = t.interval(side, base)
    clo, chi = t.interval(side, base, cpu=True)
    faults, base_faults = (statistics.median(t.faults[s]) for s in (side, base))
    target = "" if limit is None else f"<= {limit}"
    return [(f"{what}: creation to first call (wall)", where,
             f"{t.median(side):.2f} s / {t.median(base):.2f} s: {wall:.3f} "
             f"(95 % CI {lo:.3f} to {hi:.3f}, {len(t.ratios(side, base))} rounds)",
             target, "" if limit is None else _verdict(wall, lo, hi, limit)),
            ("  worker CPU time to first call", where,
             f"{t.median(side, cpu=True) * 1e3:.0f} ms / {t.median(base, cpu=True) * 1e3:.0f}"
             f" ms: {cpu:.3f} (95 % CI {clo:.3f} to {chi:.3f}; {added:+.0f} ms per worker)",
             target, "" if limit is None else _verdict(cpu, clo, chi, limit)),
            ("  minor page faults to first call (median per worker)", where,
             f"{faults:.0f} / {base_faults:.0f}: {faults - base_faults:+.0f}", "", "")]


def bench_instructions(dgx: Path) -> List[Row]:
    """The noise-free counterpart of the start rows: what ray-numa adds to a real
    worker's main thread, in instructions, on the DGX fixture under job-level auto; net
    of ``default_worker.py``'s compile, which a wrapped worker skips (ray_numa_boot.py)."""
    what = "instructions on a worker's main thread, exec to first call (callgrind)"
    if not instructions.available():
        return [(what, DGX, "n/a", "", "needs valgrind")]
    sides = {"GPU off": (1, {"numa_bind": "off"}), "GPU auto": (1, {}), "CPU auto": (0, {})}
    counts = instructions.run(sides, dgx, num_gpus=8, job_runtime_env={"numa_bind": "auto"})
    base = min(counts["GPU off"])

    def mega(values: List[int]) -> str:
        return " / ".join(f"{v / 1e6:.1f} M" for v in values)

    rows: List[Row] = [(f"{what}: GPU actor, numa_bind off", DGX,
                        f"{mega(counts['GPU off'])} ({len(counts['GPU off'])} workers)",
                        "", "")]
    for name, label in (
            ("GPU auto", "GPU actor, auto (bootstrap, binding code, bind; no script compile)"),
            ("CPU auto", "CPU-only actor, job-level auto (bootstrap only; no script compile)")):
        added = min(counts[name]) - base
        rows.append((f"  {label}", DGX, f"{mega(counts[name])}: {added / 1e6:+.1f} M "
                     f"({added / base * 100:+.2f} % of the main thread's)", "", ""))
    return rows


def _nvml_rows(log: Path, worker_pids, where: str) -> List[Row]:
    n = costs.nvml_inits(log, worker_pids)
    return [("nvmlInit calls per bound GPU worker (fake NVML's count)", where,
             f"{n['per_worker']:.2f}", "0", _check(n["per_worker"], 0)),
            ("  nvmlInit calls by other processes (the node's runtime-env agent)", where,
             str(n["elsewhere"]), "1 per node", _check(n["elsewhere"], 1))]


def bench_locality() -> List[Row]:
    from tests.vm import vmtier
    where = "2-node VM (QEMU)"
    if vmtier.missing_tools():
        return [("page locality (VM)", where, "n/a", "", f"needs {vmtier.missing_tools()}")]
    script = (f"cd {ROOT} && PYTHONDONTWRITEBYTECODE=1 {sys.executable} "
              "benchmarks/locality.py\n")
    result = vmtier.boot("two-node", script)
    line = next((l for l in result.output.splitlines() if l.startswith("LOCALITY ")), None)
    if line is None:
        return [("page locality (VM)", where, "failed",
                 "", result.output[-300:].replace("\n", " "))]
    rows: List[Row] = []
    for case, pct in json.loads(line[len("LOCALITY "):]).items():
        targeted = case in ("bound before touch", "bound after touch, migrate")
        rows.append((f"256 MiB on the GPU's node: {case}", where, f"{pct:.2f} %",
                     ">= 99 %" if targeted else "",
                     ("PASS" if pct >= 99 else "FAIL") if targeted else ""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actors", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=18,
                    help="a multiple of 6: whole cycles of the 6-side order")
    ap.add_argument("--no-vm", action="store_true")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray cluster rows")
    args = ap.parse_args()
    # An installed package has bytecode (pip compiles it); without it every worker
    # would compile ray_numa from source (e.g. under PYTHONDONTWRITEBYTECODE=1).
    compileall.compile_dir(ROOT / "ray_numa", quiet=1)
    dgx, real = _fixtures()
    try:
        rows = bench_first_bind(dgx, real) + bench_imports()
        if not args.no_ray:
            rows += bench_start(dgx, real, args.actors, args.rounds)
            rows += bench_instructions(dgx)
    finally:
        shutil.rmtree(dgx.parent, ignore_errors=True)
    if not args.no_vm:
        rows += bench_locality()
    rows += h2d.rows()
    lines = [f"machine: {platform.node()}, {os.cpu_count()} CPUs, Python "
             f"{platform.python_version()}", "",
             "| measurement | where | value | target | result |",
             "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
