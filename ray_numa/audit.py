"""``ray-numa audit``: did binding work, for every live Ray worker of a cluster?

A policy says where pages *should* go; only the kernel says where they are. The
audit therefore runs a small probe task pinned to each alive node
(``NodeAffinitySchedulingStrategy``, like :mod:`ray_numa.cluster`) that reads, for
every Ray worker process there, what ray-numa decided (the record the worker
published through :mod:`ray_numa.ledger`) and what the process really has
(``/proc/<pid>/status``, ``numa_maps``), and measures the share of its resident
memory on its GPU's node (:mod:`ray_numa.locality`). Ray's state API, when the
cluster has it (``ray[default]``, dashboard up), adds each worker's job, actor class
and GPU count; without it only workers that ray-numa recorded are known to hold GPUs.

Exit rule (for deployment gates): a GPU worker fails when it is unbound (nothing
acted on it: no plugin, no ``numa_bind``) or its measured locality is below
``--min-local``. A *skipped* worker (ray-numa looked and could not, or need not,
bind) is flagged with its reason but fails only on locality.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import environment, ledger
from .cpusets import format_cpulist, parse_cpulist
from .locality import local_share, parse_numa_maps

NO_PLUGIN = ("the ray-numa plugin is not enabled on this node, so numa_bind is ignored "
             "there; start Ray on it after: eval \"$(ray-numa env)\"")
NOT_REQUESTED = "numa_bind is not in this worker's runtime_env"
STATE_API_MISSING = ("Ray's state API is unavailable ({}; it needs ray[default] and the "
                     "dashboard): GPU counts, jobs and actor names are known only for "
                     "workers ray-numa recorded")


# ---- on the node: what one process really has ---------------------------------------

def _status_fields(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def memory_policies(numa_maps: str) -> Dict[str, int]:
    """Resident KiB per memory policy, as ``numa_maps`` prints it per mapping
    (``default``, ``bind:1``, ``prefer:0``, ``interleave:0-1``...)."""
    out: Counter = Counter()
    for line in numa_maps.splitlines():
        fields = line.split()
        if len(fields) > 1:
            # mpol_to_str's two-word modes: "prefer (many):0-1", "weighted interleave:0-1"
            two = len(fields) > 2 and fields[1] in ("prefer", "weighted") and \
                fields[2].startswith(("(many)", "interleave"))
            out[" ".join(fields[1:3]) if two else fields[1]] += \
                sum(parse_numa_maps(line).values())
    return dict(out)


def _environ(pid: int) -> Dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = (item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def process_facts(pid: int) -> Dict[str, Any]:
    """The kernel's view of ``pid``; ``error`` names what could not be read."""
    facts: Dict[str, Any] = {}
    try:
        status = _status_fields(pid)
        facts["cpus_allowed"] = status.get("Cpus_allowed_list", "")
        facts["mems_allowed"] = status.get("Mems_allowed_list", "")
        with open(f"/proc/{pid}/numa_maps") as f:
            text = f.read()
        policies = memory_policies(text)
        facts["mempolicy"] = max(policies, key=policies.get) if policies else ""
        facts["mempolicies"] = sorted(policies)
        # the process's own memory: file pages sit where their first reader put them
        own = parse_numa_maps(text, anonymous=True)
        facts["kb_by_node"] = {str(n): kb for n, kb in sorted(own.items())}
    except OSError as exc:
        facts["error"] = f"{exc.strerror or exc}: {exc.filename or f'/proc/{pid}'}"
    return facts


def gpu_nodes(binding: Dict[str, Any], device_order: Optional[str]) -> Tuple[int, ...]:
    """The NUMA nodes a worker's memory belongs on: where ray-numa bound it, else
    its GPUs' nodes (with their CPU nodes, for GB200's CPU-less GPU nodes); ()
    when unknown. On a single-node machine every page is local."""
    from .cuda_ids import GpuResolutionError, resolve_visible
    from .gpus import discover_gpus, gpu_numa_node
    from .policy import cpu_nodes_for
    from .topology import machine_topology
    topo = machine_topology()
    if len(topo.nodes) == 1:
        return tuple(topo.nodes)
    if binding.get("status") == "bound":
        return tuple(binding.get("mem_nodes") or binding.get("cpu_nodes") or ())
    try:
        chosen = resolve_visible(binding.get("gpus") or [], discover_gpus()[0], device_order)
    except GpuResolutionError:
        return ()
    nodes = set()
    for gpu in chosen:
        node = gpu_numa_node(gpu, environment.sys_root(), topo.nodes)   # as binding does
        if node is not None and node in topo.nodes:
            nodes.update((node, *cpu_nodes_for(topo, node)))
    return tuple(sorted(nodes))


def kernel_spellings(memory: str, nodes: Sequence[int]) -> Tuple[str, ...]:
    """How ``numa_maps`` prints the policy ``memory`` over ``nodes`` as ray-numa sets
    it (no mode flags), per ``mpol_to_str`` in the kernel's mm/mempolicy.c: the mode
    (``policy_modes[]``: "bind", "interleave", "prefer", "prefer (many)", "local"),
    then ``:%*pbl``, the node list, for every mode but local. A preferred policy over
    one node is MPOL_PREFERRED, over several MPOL_PREFERRED_MANY (apply._attempts);
    () for a policy the audit does not check ("none")."""
    listed = format_cpulist(nodes)
    if memory == "local":
        return ("local",)
    if memory in ("bind", "interleave"):
        return (f"{memory}:{listed}",)
    if memory == "preferred":
        return (f"prefer:{listed}", f"prefer (many):{listed}") if len(nodes) == 1 \
            else (f"prefer (many):{listed}",)
    return ()


def contradiction(binding: Dict[str, Any], facts: Dict[str, Any]) -> str:
    """Why the kernel contradicts a record that says "bound" ("" if it does not).

    The record is the worker's word; ``/proc/<pid>/status`` and ``numa_maps`` are the
    kernel's. The affinity is every thread's (ray-numa sets it on each), and
    ``numa_maps`` shows the main thread's memory policy on every mapping without one
    of its own, so a policy ray-numa set there shows on some mapping. Only a fixture
    machine's recording backend (bindings recorded, not applied) is believed as is.
    """
    if binding.get("status") != "bound" or "error" in facts:
        return ""
    if binding.get("backend") == "record":
        return ("" if environment.simulated() else "its binding was recorded for a "
                "fixture machine, not applied to this node's kernel")
    actual = format_cpulist(parse_cpulist(facts["cpus_allowed"]))
    if binding["cpus"] != actual:
        return f"the kernel has it on CPUs {actual}, not {binding['cpus']}"
    spelled = kernel_spellings(binding["memory"], binding.get("mem_nodes") or ())
    if spelled and not set(spelled) & set(facts["mempolicies"]):
        return (f"no mapping in its numa_maps has memory policy {spelled[0]} "
                f"({', '.join(facts['mempolicies']) or 'none'})")
    return ""


def _recorded(pid: int) -> Tuple[Optional[Dict[str, Any]], str]:
    """What ``pid`` published, or None and why not a usable record ("" if none)."""
    try:
        return ledger.read(pid), ""
    except ledger.RecordError as exc:
        return None, str(exc)
    except OSError as exc:       # the directory is someone else's, or a link
        return None, (f"ray-numa's ledger {exc.filename or ledger.ledger_dir()} cannot be "
                      f"used: {exc.strerror or exc}")


def examine(pid: int, plugin_here: bool) -> Dict[str, Any]:
    """One worker: ray-numa's record (or why there is none), facts, locality."""
    try:
        env = _environ(pid)
    except OSError as exc:
        env, env_error = {}, f"cannot read /proc/{pid}/environ: {exc.strerror or exc}"
    else:
        env_error = ""
    binding, bad_record = _recorded(pid)
    facts = process_facts(pid)
    contradicted = contradiction(binding, facts) if binding else ""
    if binding is None or contradicted:
        reason = (bad_record or env_error or ("ray-numa has not bound this process"
                                              if env.get(environment.SPEC_ENV)
                                              else NOT_REQUESTED if plugin_here else NO_PLUGIN))
        if contradicted:
            reason = f"its record says bound, but {contradicted}"
        binding = {"status": "unbound", "reason": reason}
    nodes = gpu_nodes(binding, env.get("CUDA_DEVICE_ORDER"))
    kb = {int(n): v for n, v in facts.get("kb_by_node", {}).items()}
    local = local_share(kb, nodes) if nodes and kb else None
    from .nic_env import audit_warnings
    return {"pid": pid, "job": env.get("RAY_JOB_ID", ""), "binding": binding,
            "actual": facts, "gpu_nodes": list(nodes), "local_pct": local,
            "nic_warnings": audit_warnings(binding, env, environment.sys_root())}


def _ray_workers() -> Dict[int, str]:
    """``{pid: name}`` of this raylet's busy workers (their ``ray::`` process titles).

    Several raylets may share a machine (other clusters, ``cluster_utils`` nodes):
    a worker belongs to the one whose pid Ray put in its ``RAY_RAYLET_PID``.
    """
    import psutil
    raylet = os.environ.get("RAY_RAYLET_PID")
    out = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(proc.info["cmdline"] or [])
        if not title.startswith("ray::") or title.startswith("ray::IDLE"):
            continue
        try:
            env = _environ(proc.info["pid"])
        except OSError:
            continue
        if "RAY_JOB_ID" not in env or (raylet and env.get("RAY_RAYLET_PID") != raylet):
            continue       # Ray's agents carry ray:: titles too, but run no job
        out[proc.info["pid"]] = title[len("ray::"):].split(" ")[0]
    return out


def probe_node(known: Dict[int, Dict[str, Any]], node_id: str) -> Dict[str, Any]:
    """Runs on one node: every busy Ray worker there (plus ``known`` pids from the
    state API), examined; records this node's metrics."""
    from . import metrics
    ledger.prune()
    plugin_here = bool(os.environ.get(environment.SPEC_ENV))
    titles = _ray_workers()
    titles.pop(os.getpid(), None)
    rows = []
    for pid in sorted(set(titles) | set(known)):
        if pid == os.getpid() or not os.path.exists(f"/proc/{pid}"):
            continue
        row = examine(pid, plugin_here)
        info = known.get(pid, {})
        row.update(node=node_id, name=info.get("name") or titles.get(pid, "?"),
                   job=info.get("job") or row["job"], gpus=info.get("gpus"))
        if row["gpus"] is None and row["binding"].get("gpus"):
            row["gpus"] = len(row["binding"]["gpus"])
        rows.append(row)
    metrics.record(node_id, rows)
    return {"node": node_id, "plugin": plugin_here, "rows": rows}


# ---- on the driver: list, probe each node, judge ------------------------------------

def _state_api_workers(address: str, nodes: List[str]
                       ) -> Tuple[Optional[Dict[str, Dict[int, Dict[str, Any]]]], str]:
    """``{node_id: {pid: {name, job, gpus}}}`` from Ray's state API (Ray's limit is
    10000 rows per list), or None and why not.

    A cluster without a dashboard makes the client fall back to 127.0.0.1:8265, which
    may be *another* cluster's dashboard: its answer counts only if it knows our nodes.
    """
    try:
        from ray.util.state import list_actors, list_nodes, list_tasks
        common = dict(address=address, detail=True, limit=10000,
                      raise_on_missing_output=False)
        if not {n.node_id for n in list_nodes(**common)} & set(nodes):
            return None, "the dashboard that answered serves another cluster"
        actors = list_actors(filters=[("state", "=", "ALIVE")], **common)
        tasks = list_tasks(filters=[("state", "=", "RUNNING")], **common)
    except Exception as exc:     # ServerUnavailable, ImportError of ray[default] parts...
        return None, str(exc).split("\n")[0]
    out: Dict[str, Dict[int, Dict[str, Any]]] = {}
    for a in actors:
        if a.pid:
            out.setdefault(a.node_id, {})[a.pid] = {
                "name": a.class_name, "job": a.job_id,
                "gpus": (a.required_resources or {}).get("GPU", 0)}
    for t in tasks:
        if t.type == "NORMAL_TASK" and t.worker_pid and t.node_id:
            out.setdefault(t.node_id, {}).setdefault(t.worker_pid, {
                "name": t.name, "job": t.job_id,
                "gpus": (t.required_resources or {}).get("GPU", 0)})
    return out, ""


def failures(row: Dict[str, Any], min_local: float) -> List[str]:
    """Why ``row`` fails the gate ([] if it passes); only GPU workers can fail."""
    if not row.get("gpus"):
        return []
    if row["binding"]["status"] == "unbound":
        return ["unbound GPU worker"]
    if row["local_pct"] is not None and row["local_pct"] < min_local:
        return [f"local memory {row['local_pct']:g}% < {min_local:g}%"]
    return []


def run_audit(min_local: float = 0.0, timeout: float = 120) -> Dict[str, Any]:
    """Audit the cluster ``ray`` is connected to; ``ok`` is the gate's verdict."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    state, why = _state_api_workers(ray.get_runtime_context().gcs_address, nodes)
    probe = ray.remote(num_cpus=0, max_retries=0)(probe_node)
    refs = [probe.options(runtime_env={"numa_bind": "auto"},
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
            .remote((state or {}).get(n, {}), n) for n in nodes]
    results = ray.get(refs, timeout=timeout)
    for result in results:
        for row in result["rows"]:
            row["flags"] = failures(row, min_local)
    notes = [] if state is not None else [STATE_API_MISSING.format(why)]
    ok = not any(row["flags"] for r in results for row in r["rows"])
    return {"ok": ok, "min_local": min_local, "notes": notes, "nodes": results}


def _cells(row: Dict[str, Any]) -> List[Any]:
    b, a = row["binding"], row["actual"]
    did = b["status"] + (f" cpus {b['cpus']} mem {b.get('memory')} "
                         f"{','.join(map(str, b.get('mem_nodes') or []))}".rstrip()
                         if b["status"] == "bound" else "")
    local = "-" if row["local_pct"] is None else f"{row['local_pct']:.1f}%"
    return [row["pid"], row["name"], row["job"] or "-",
            "?" if row["gpus"] is None else f"{row['gpus']:g}", did,
            a.get("cpus_allowed", "?"), a.get("mempolicy", a.get("error", "?")), local,
            "; ".join(row["flags"] + ([] if b["status"] == "bound" else [b["reason"]])
                      + row.get("nic_warnings", []))]


def format_audit(report: Dict[str, Any], table: Any) -> str:
    """The audit for people: one table per node, failing workers marked ``!``."""
    out = [f"note: {n}" for n in report["notes"]]
    header = ["pid", "worker", "job", "gpus", "ray-numa did", "Cpus_allowed", "mempolicy",
              "local", "why"]
    for node in report["nodes"]:
        plugin = "plugin on" if node["plugin"] else "PLUGIN NOT ENABLED"
        out.append(f"\nnode {node['node']} ({plugin})")
        rows = [[("! " if r["flags"] else "") + str(c) if i == 0 else c
                 for i, c in enumerate(_cells(r))] for r in node["rows"]]
        out.append(table(rows, header) if rows else "  no busy Ray workers")
    bad = sum(bool(r["flags"]) for n in report["nodes"] for r in n["rows"])
    out.append(f"\n{'OK' if report['ok'] else 'FAIL'}: {bad} GPU worker(s) unbound or "
               f"below {report['min_local']:g}% local memory")
    return "\n".join(out)

