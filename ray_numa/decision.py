"""What planning decides for a worker: a :class:`Plan` to apply, or a :class:`Skip`.

Apart from :mod:`ray_numa.policy`, which makes them, so that a worker binding from the
agent's prepared plan (:mod:`ray_numa.prepared`) reads them without loading the
planner (policy, planning, topology): about a millisecond of imports per GPU worker.
"""
from __future__ import annotations

from collections import namedtuple
from typing import FrozenSet, Optional, Tuple


class Plan(namedtuple("Plan", "cpus cpu_nodes mem_nodes memory reason notes home",
                      defaults=((), None))):
    __slots__ = ()
    cpus: FrozenSet[int]
    cpu_nodes: Tuple[int, ...]
    mem_nodes: Tuple[int, ...]
    memory: str                  # bind | preferred | interleave | none
    reason: str
    notes: Tuple[str, ...]       # default ()
    #: The GPU's own memory node (nearest with memory): what "preferred" means where
    #: the kernel can prefer only one node (no MPOL_PREFERRED_MANY before 5.15), what
    #: a refused bind/interleave falls back to, and where touched pages migrate.
    home: Optional[int]          # default None


class Skip(namedtuple("Skip", "reason fix quiet", defaults=("", False))):
    """Binding is impossible or pointless; ``fix`` says what the user can do."""
    __slots__ = ()
    reason: str
    fix: str                     # default ""
    #: Nothing to bind (no GPU, one NUMA node, span="skip"): logged, not warned, and
    #: no failure for strict, which refuses only a binding it cannot make; default False
    quiet: bool

    def message(self) -> str:
        return f"{self.reason}; {self.fix}" if self.fix else self.reason
