"""Binding for processes Ray did not start: torchrun, Slurm, vLLM external_launcher.

There is no worker start to hook, so the process binds itself (or ``ray-numa exec``
binds and then ``exec``s the real command, which inherits affinity and memory
policy across ``execve``). The GPU comes from the local rank, resolved through this
process's ``CUDA_VISIBLE_DEVICES`` the way CUDA resolves ``cuda:<local_rank>``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from .binding import Binding, process_binder
from .cuda_ids import GpuResolutionError, parse_visible, visible_entry
from .options import BindOptions, parse
from .decision import Skip

#: Launchers' local-rank variables, most specific first.
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK",
                   "MPI_LOCALRANKID")


def local_rank(environ: Optional[Mapping[str, str]] = None) -> int:
    """This process's local rank (0 for a lone process), checked for sanity."""
    environ = os.environ if environ is None else environ
    for var in LOCAL_RANK_VARS:
        if environ.get(var, "").strip():
            rank = int(environ[var])
            break
    else:
        return 0
    world = environ.get("LOCAL_WORLD_SIZE", "").strip()
    if world and not 0 <= rank < int(world):
        raise ValueError(f"local rank {rank} is outside LOCAL_WORLD_SIZE={world}")
    return rank


def resolve_options(gpu: Union[str, int] = "auto", node: Optional[int] = None,
                    options: Any = None, strict: Optional[bool] = None) -> BindOptions:
    opts = parse(options if options is not None else ("auto" if node is None else node))
    if node is not None and options is not None:
        opts = opts._replace(node=(node,))
    if strict is not None:
        opts = opts._replace(strict=strict)
    return opts


def bind_current_process(gpu: Union[str, int] = "auto", *, node: Optional[int] = None,
                         options: Any = None, strict: Optional[bool] = None) -> Binding:
    """Bind this process near its GPU (or to ``node``) and return the record.

    ``gpu="auto"`` takes the only GPU when ``CUDA_VISIBLE_DEVICES`` leaves exactly
    one, else the local rank (``LOCAL_RANK``, ``SLURM_LOCALID``, ...) as the CUDA
    device index; an int names the device index directly. Either is
    resolved through ``CUDA_VISIBLE_DEVICES``/``CUDA_DEVICE_ORDER`` to the physical
    GPU. ``options`` takes any ``numa_bind`` value (dict for cpus/memory modes).
    All threads get the affinity, pages touched so far are migrated, and binding
    failures warn and return a "skipped" record unless ``strict``.
    """
    opts = resolve_options(gpu, node, options, strict)
    if not opts.auto:
        return process_binder().bind(opts)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = parse_visible(visible)
    if gpu == "auto" and entries is not None and len(entries) == 1:
        # Slurm --gpus-per-task=1 / one GPU per process: cuda:0 is that GPU,
        # whatever the local rank says (SLURM_LOCALID=5 CUDA_VISIBLE_DEVICES=5)
        binding = process_binder().bind(opts, entries, gpu_rule="only visible GPU")
    else:
        rule = "local rank" if gpu == "auto" else "device index"
        logical = local_rank() if gpu == "auto" else int(gpu)
        try:
            entry = visible_entry(logical, visible)
        except GpuResolutionError as exc:
            return process_binder().skip(Skip(str(exc)), opts, gpu_rule=rule)
        binding = process_binder().bind(opts, [entry], gpu_rule=rule)
    from .follow import install as follow_selected_device
    follow_selected_device()     # rebind if torch then selects a device on another node
    return binding
