"""``ray-numa``: show the machine, bind-and-exec a command, print plugin settings.

    ray-numa show [--json]
    ray-numa exec [--gpu auto|N] [--node N] [--cpus MODE|LIST] [--memory POLICY]
                  [--strict] [--numactl] -- CMD ARGS...
    ray-numa env                     # export lines enabling the plugin for `ray start`
    ray-numa resources [--labels]    # GPU-per-NUMA-node resources/labels for `ray start`
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any, Dict, List, Optional

from . import environment
from .apply import BindError
from .options import OptionsError
from .topology import format_cpulist


def _table(rows: List[List[Any]], header: List[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: Dict[str, Any]) -> str:
    out = []
    if report["fixture"]:
        out.append(f"(fixture machine: {report['fixture']})")
    ids = [n["id"] for n in report["nodes"]]
    out.append("NUMA nodes")
    shown = [n for n in report["nodes"] if n["cpu_count"] or n["mem_gib"]]
    out.append(_table([[n["id"], n["cpu_count"], n["cpus"] or "-", n["mem_gib"],
                        " ".join(str(n["distances"][ids.index(m["id"])]) for m in shown)]
                       for n in shown],
                      ["node", "#cpus", "cpus", "mem GiB", "distance to " +
                       " ".join(str(m["id"]) for m in shown)]))
    empty = [n["id"] for n in report["nodes"] if n not in shown]
    if empty:
        out.append(f"  (nodes {format_cpulist(empty)} have no CPUs and no memory)")
    out.append(f"\nGPUs (from {report['gpu_source']})")
    rows = []
    for g in report["gpus"]:
        plan = g["plan"]
        what = (f"cpus {plan['cpus']}; memory {plan['memory']} {plan['mem_nodes']}".rstrip()
                if "cpus" in plan else f"skip: {plan['skip']}")
        rows.append([g["index"], g["bus_id"], g["name"], "?" if g["numa_node"] is None
                     else g["numa_node"], what])
    out.append(_table(rows, ["gpu", "bus id", "name", "node", "numa_bind=auto would"])
               if rows else "  none")
    p = report["process"]
    out.append("\nThis process")
    out.append(_table([[k, "" if v is None else v] for k, v in p.items()], ["setting", "value"]))
    return "\n".join(out)


def _options_value(args: argparse.Namespace) -> Any:
    value: Dict[str, Any] = {}
    if args.node is not None:
        value["node"] = args.node
    if args.cpus:
        value["cpus"] = ([int(c) for c in args.cpus.split(",")]
                         if args.cpus[0].isdigit() else args.cpus)
    if args.memory:
        value["memory"] = args.memory
    if args.strict:
        value["strict"] = True
    return value


def cmd_show(args: argparse.Namespace) -> int:
    from .report import machine_report
    report = machine_report()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from .apply import numactl_argv
    from .binding import plan_for
    from .launcher import bind_current_process, resolve_options
    from .policy import Plan
    if not args.command:
        print("ray-numa exec: give the command after --", file=sys.stderr)
        return 2
    gpu = args.gpu if args.gpu == "auto" else int(args.gpu)
    options = resolve_options(gpu, None, _options_value(args))
    if args.numactl and not options.auto and not environment.simulated():
        plan = plan_for(options)
        if isinstance(plan, Plan):
            argv = numactl_argv(plan) + list(args.command)
            os.execvp(argv[0], argv)
    binding = bind_current_process(gpu, options=options)
    environment.logger().debug("exec %s after %s", shlex.join(args.command), binding)
    # affinity and memory policy survive execve: the command starts bound
    os.execvp(args.command[0], args.command)
    return 127  # not reached


def cmd_env(args: argparse.Namespace) -> int:
    from .plugin import plugin_env
    for key, value in plugin_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def cmd_resources(args: argparse.Namespace) -> int:
    from .placement import node_gpu_layout
    layout = node_gpu_layout()
    print(json.dumps(layout["labels"] if args.labels else layout["resources"]))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-numa", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    show = sub.add_parser("show", help="NUMA nodes, GPUs, permissions, per-GPU plan")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    ex = sub.add_parser("exec", help="bind near a GPU (or node), then exec a command")
    ex.add_argument("--gpu", default="auto",
                    help="CUDA device index, or auto (LOCAL_RANK / SLURM_LOCALID)")
    ex.add_argument("--node", type=int, help="bind to this NUMA node instead of a GPU's")
    ex.add_argument("--cpus", help="node|socket|exclusive|core-complex or a CPU list 0,1,2")
    ex.add_argument("--memory", choices=["bind", "preferred", "interleave", "none"])
    ex.add_argument("--strict", action="store_true", help="fail instead of running unbound")
    ex.add_argument("--numactl", action="store_true",
                    help="exec through numactl (explicit --node only)")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    env = sub.add_parser("env", help="shell exports that enable the plugin for ray start")
    env.set_defaults(func=cmd_env)
    res = sub.add_parser("resources", help="GPU-per-NUMA-node resources for ray start")
    res.add_argument("--labels", action="store_true", help="print node labels instead")
    res.set_defaults(func=cmd_resources)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return args.func(args)
    except (OptionsError, ValueError) as exc:
        print(f"ray-numa: {exc}", file=sys.stderr)
        return 2
    except BindError as exc:
        print(f"ray-numa: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
