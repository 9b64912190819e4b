"""``ray-numa``: show the machine, bind-and-exec a command, print plugin settings,
audit a running cluster.

    ray-numa show [--json]
    ray-numa exec [--gpu auto|N] [--node N] [--cpus MODE|LIST] [--memory POLICY]
                  [--strict] [--best-effort] [--numactl] [--nic auto|VAR,...]
                  -- CMD ARGS...
    ray-numa env                     # export lines enabling the plugin for `ray start`
    ray-numa resources [--labels]    # GPU-per-NUMA-node resources/labels for `ray start`
    ray-numa audit [--address ADDR] [--json] [--min-local PCT] [--watch SECONDS]
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
from .options import NIC_VARS, OptionsError
from .cpusets import format_cpulist, parse_cpulist

#: How ``show`` prints a CUDA variable that is not set, and what that means.
UNSET = {"CUDA_DEVICE_ORDER": "(unset: CUDA's default, FASTEST_FIRST)",
         "CUDA_VISIBLE_DEVICES": "(unset: every GPU visible)"}


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
    out.append(format_nics(report["nics"]))
    if report.get("sysfs_problems"):
        out.append("\nsysfs files ignored (read as hwloc would):")
        out.extend(f"  {line}" for line in report["sysfs_problems"])
    p = report["process"]
    out.append("\nThis process")
    out.append(_table([[k, UNSET.get(k, "") if v is None else v] for k, v in p.items()],
                      ["setting", "value"]))
    return "\n".join(out)


def format_nics(nics: Dict[str, Any]) -> str:
    """The GPU x NIC matrix as ``nvidia-smi topo -m`` prints its NIC columns, and
    the NIC each GPU gets with ``nic: "auto"``."""
    lost = (f"{', '.join(nics['unplaced'])}: listed in /sys/class/infiniband, but no PCI "
            "function behind them or their netdev (a bond, VLAN, veth or USB NIC): not "
            "placed" if nics.get("unplaced") else "")
    if not nics["devices"]:
        return "\nRDMA NICs: none" + (f" placed; {lost}" if lost else
                                      " (no /sys/class/infiniband devices)")
    names = [d["name"] for d in nics["devices"]]
    rows = [[f"GPU{g}"] + [c or "?" for c in (row or ["?"] * len(names))]
            + [",".join(nics["chosen"].get(g, {}).get("nets", [])) or "-"]
            for g, row in nics["matrix"].items()]
    ports = ["; ".join(f"{d['name']}:{p['port']} {p['state'] or '?'} {p['link_layer']} "
                       f"{'?' if p['rate_gbps'] is None else format(p['rate_gbps'], 'g')}G"
                       f"{' eligible' if p['eligible'] else ''}"
                       + (f" (software, over {d['via_netdev']})" if d.get("via_netdev") else "")
                       for p in d["ports"]) for d in nics["devices"]] + ([lost] if lost else [])
    return ("\nGPU x NIC (PIX: same PCIe switch, PXB: several switches, PHB: same host "
            "bridge, NODE: same NUMA node, SYS: across NUMA nodes, or a NUMA node unknown)\n"
            + _table(rows, [""] + names + ['nic: "auto"']) + "\n  " + "\n  ".join(ports))


def _options_value(args: argparse.Namespace) -> Any:
    value: Dict[str, Any] = {}
    if args.node is not None:
        value["node"] = args.node
    if args.cpus:
        # a CPU list in the kernel's format, as `show` prints it (0-3,8), or a mode
        value["cpus"] = (sorted(parse_cpulist(args.cpus, "--cpus"))
                         if args.cpus[0].isdigit() else args.cpus)
    if args.memory:
        value["memory"] = args.memory
    if args.nic is not None:
        value["nic"] = _nic_value(args.nic)
        if args.node is not None and value["nic"] != "off":
            raise ValueError("--nic follows the GPU, and --node binds none: drop one")
    if args.strict or (_explicit(args) and not args.best_effort):
        value["strict"] = True
    return value


def _nic_value(text: str) -> Any:
    """``--nic auto|off|VAR,...`` as the ``nic`` option; a bad value is an error
    about --nic itself, not the whole list of numa_bind forms."""
    if text.strip() in ("auto", "off"):
        return text.strip()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or not all(n in NIC_VARS for n in names):
        raise ValueError(f"--nic {text!r}: give auto, off, or a comma-separated list of "
                         f"{', '.join(NIC_VARS)}")
    return {"vars": names}


def _explicit(args: argparse.Namespace) -> bool:
    """A request the user spelled out (--node N, --gpu N): failing it is an error."""
    return args.node is not None or args.gpu != "auto"


def _no_gpu() -> Optional[str]:
    """The CLI's own words when a GPU binding is asked on a machine without GPUs."""
    from .gpus import discover_gpus
    gpus, source = discover_gpus()
    if gpus:
        return None
    return (f"this machine shows no NVIDIA GPU (from {source}), so there is no GPU "
            "to bind near; bind to a NUMA node with --node N instead")


def cmd_show(args: argparse.Namespace) -> int:
    from .report import machine_report
    report = machine_report()
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from .apply import numactl_argv
    from .launcher import bind_current_process, resolve_options
    from .planning import plan_for
    from .decision import Plan
    if not args.command:
        print("ray-numa exec: give the command after --", file=sys.stderr)
        return 2
    gpu = args.gpu if args.gpu == "auto" else int(args.gpu)
    options = resolve_options(gpu, None, _options_value(args))
    no_gpu = _no_gpu() if options.auto else None
    if no_gpu and options.strict:
        print(f"ray-numa exec: {no_gpu} (or add --best-effort to run unbound)",
              file=sys.stderr)
        return 1
    if args.numactl and not options.auto and not environment.simulated():
        plan = plan_for(options)
        if isinstance(plan, Plan):
            return _execvp(numactl_argv(plan) + list(args.command))
    if no_gpu:
        print(f"ray-numa exec: {no_gpu}; running {args.command[0]} unbound", file=sys.stderr)
    else:
        binding = bind_current_process(gpu, options=options)
        environment.logger().debug("exec %s after %s", shlex.join(args.command), binding)
    return _execvp(args.command)


def _execvp(argv: List[str]) -> int:
    """exec ``argv`` (affinity and memory policy survive execve: it starts bound);
    returns the shell's status for a command that cannot run."""
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"ray-numa exec: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
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


def cmd_audit(args: argparse.Namespace) -> int:
    import time
    import ray
    from . import register
    from .audit import format_audit, run_audit
    register()
    try:
        ray.init(address=args.address, logging_level="ERROR", log_to_driver=False)
    except ConnectionError as exc:     # none running, or several and no --address
        print(f"ray-numa audit: cannot connect to Ray at {args.address}: {exc}",
              file=sys.stderr)
        return 2
    try:
        while True:
            report = run_audit(args.min_local)
            print(json.dumps(report, indent=2) if args.json else format_audit(report, _table),
                  flush=True)
            if not args.watch:
                return 0 if report["ok"] else 1
            time.sleep(args.watch)
    finally:
        ray.shutdown()


def _sub(sub: Any, name: str, help: str, example: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    from . import __version__
    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        ray_version = "not installed"
    return f"ray-numa {__version__} (Ray {ray_version})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-numa", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="cmd", required=True)
    show = _sub(sub, "show", "NUMA nodes, GPUs, permissions, per-GPU plan",
                "ray-numa show --json | jq '.gpus[].plan'")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    ex = _sub(sub, "exec", "bind near a GPU (or node), then exec a command",
              "LOCAL_RANK=3 ray-numa exec -- python train.py   # or: --node 1 --cpus 0-3")
    ex.add_argument("--gpu", default="auto",
                    help="CUDA device index, or auto (LOCAL_RANK / SLURM_LOCALID)")
    ex.add_argument("--node", type=int, help="bind to this NUMA node instead of a GPU's")
    ex.add_argument("--cpus", help="node|socket|exclusive|core-complex or a CPU list "
                                   "(0,1,2 or 0-3,8 as show prints it)")
    ex.add_argument("--memory", choices=["bind", "preferred", "interleave", "none"])
    ex.add_argument("--strict", action="store_true",
                    help="fail instead of running unbound, also for --gpu auto")
    ex.add_argument("--best-effort", action="store_true",
                    help="run the command unbound when an explicit --node/--gpu cannot be "
                         "honoured (default: exit 1)")
    ex.add_argument("--nic", metavar="auto|off|VAR,...",
                    help="set UCX_NET_DEVICES, NVSHMEM_HCA_LIST, UCCL_P2P_RDMA_DEV (auto) "
                         "or the variables named (NCCL_IB_HCA too) to the GPU's NIC")
    ex.add_argument("--numactl", action="store_true",
                    help="exec through numactl (explicit --node only)")
    ex.add_argument("command", nargs=argparse.REMAINDER)
    ex.set_defaults(func=cmd_exec)
    env = _sub(sub, "env", "shell exports that enable the plugin for ray start",
               'eval "$(ray-numa env)" && ray start --head')
    env.set_defaults(func=cmd_env)
    res = _sub(sub, "resources", "GPU-per-NUMA-node resources for ray start",
               "ray start --head --resources \"$(ray-numa resources)\"")
    res.add_argument("--labels", action="store_true", help="print node labels instead")
    res.set_defaults(func=cmd_resources)
    aud = _sub(sub, "audit", "per Ray worker of a running cluster: what ray-numa did, what "
               "the process has, and the share of its memory on its GPU's NUMA node; "
               "exits 1 if a GPU worker is unbound or below --min-local",
               "ray-numa audit --address auto --min-local 90")
    aud.add_argument("--address", default="auto", help="Ray cluster address (default auto)")
    aud.add_argument("--json", action="store_true")
    aud.add_argument("--min-local", type=float, default=0.0, metavar="PCT",
                     help="fail GPU workers with less local memory than this percent")
    aud.add_argument("--watch", type=float, metavar="SECONDS",
                     help="repeat every SECONDS (keeps the Ray metrics current)")
    aud.set_defaults(func=cmd_audit)
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
        hint = (" (add --best-effort to run the command unbound)"
                if args.cmd == "exec" and not args.strict else "")
        print(f"ray-numa: {exc}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
