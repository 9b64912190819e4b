"""What ray-numa did to a process, and why: the record every entry point returns.

A value class of its own (not in :mod:`ray_numa.binding`, which produces it) because
the worker, the launcher, the ledger and the audit all read it; ``binding`` re-exports
it under its old name.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Dict, Tuple


class Binding(namedtuple("Binding", "status reason cpus cpu_nodes mem_nodes memory gpus "
                         "gpu_rule history backend notes calls nic nic_path nic_vars "
                         "thread_policies",
                         defaults=("", (), (), "none", (), "", (), "", (), (), (), "", (),
                                   ()))):
    """What this process is bound to and why (``status``: bound|skipped|off|unbound).

    A typed result like psutil's, and built like psutil's: a ``collections.namedtuple``
    subclass, the annotations documenting its fields (why: see ``policy.py``).
    """
    __slots__ = ()
    status: str
    reason: str
    cpus: str                      # kernel list format, e.g. "0-55,112-167"; default ""
    cpu_nodes: Tuple[int, ...]     # default ()
    mem_nodes: Tuple[int, ...]     # default ()
    memory: str                    # default "none"
    gpus: Tuple[str, ...]          # the device ids bound for, as Ray/CUDA named them; ()
    #: Which rule chose the GPU(s): "assigned" (Ray's assignment), "followed device"
    #: (the CUDA device the process selected), "local rank", "only visible GPU",
    #: "device index"; "" (the default) for an explicit node.
    gpu_rule: str
    #: Earlier bindings of this process, oldest first (each an ``as_dict()`` without
    #: its own history), e.g. the bind at assignment before following the device; ().
    history: Tuple[Dict[str, Any], ...]
    backend: str                   # numactl | syscall | record; default ""
    notes: Tuple[str, ...]         # default ()
    calls: Tuple[Tuple[Any, ...], ...]   # what the recording backend did; default ()
    #: ``numa_bind: {"nic": ...}`` (see ``nic_env.py``): the GPU's NIC port(s), e.g.
    #: ("mlx5_0:1",), the PCI class of the path to them (PIX, PXB, PHB, NODE, SYS)
    #: and the variables as the process has them ("UCX_NET_DEVICES=mlx5_0:1"); (), "", ()
    nic: Tuple[str, ...]
    nic_path: str
    nic_vars: Tuple[str, ...]
    #: Set while the threads ray-numa set a memory policy on disagree: a memory policy is
    #: per thread, so a bind or follow on a thread other than main (an async actor's
    #: event loop, a threaded actor's pool) leaves main, and the threads it starts, with
    #: the old one until main runs a task. One ``{"tid", "main", "memory", "nodes"}``
    #: per live thread (``memory`` "not set by ray-numa" for one it never set a policy
    #: on: it has what it inherited); () (the default) when the threads ray-numa set
    #: agree with ``memory``/``mem_nodes``.
    thread_policies: Tuple[Dict[str, Any], ...]

    def as_dict(self) -> Dict[str, Any]:
        return self._asdict()


UNBOUND = Binding(status="unbound", reason="ray_numa has not bound this process")
