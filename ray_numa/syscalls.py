"""The NUMA memory-policy syscalls through ctypes: no libnuma needed.

glibc has no wrappers for set_mempolicy/get_mempolicy/mbind (libnuma does), so
they are called by number. Errors are OSError naming the syscall and its
arguments, so a warning can tell the user exactly what the kernel refused.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Iterable, Optional, Tuple

MODES = {"default": 0, "preferred": 1, "bind": 2, "interleave": 3, "local": 4,
         "preferred_many": 5}
MODE_NAMES = {v: k for k, v in MODES.items()}
MPOL_F_ADDR = 2
MPOL_F_MEMS_ALLOWED = 4
#: mbind(2): move the range's pages that this process alone maps (never MPOL_MF_MOVE_ALL,
#: which with CAP_SYS_NICE moves pages other processes map too).
MPOL_MF_MOVE = 1 << 1

# Syscall numbers from the kernel's unistd tables.
_NR = {
    "x86_64": {"mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239},
    "aarch64": {"mbind": 235, "get_mempolicy": 236, "set_mempolicy": 237},
    "ppc64le": {"mbind": 259, "get_mempolicy": 260, "set_mempolicy": 261},
}
_MAX_NODES = 1024
_ULONG_BITS = ctypes.sizeof(ctypes.c_ulong) * 8
_Mask = ctypes.c_ulong * (_MAX_NODES // _ULONG_BITS)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _nr(name: str) -> int:
    table = _NR.get(platform.machine())
    if table is None:
        raise OSError(38, f"{name}: no syscall number known for {platform.machine()}")
    return table[name]


def _mask(nodes: Iterable[int]) -> "_Mask":
    mask = _Mask()
    for n in nodes:
        mask[n // _ULONG_BITS] |= 1 << (n % _ULONG_BITS)
    return mask


def _nodes(mask: "_Mask") -> Tuple[int, ...]:
    return tuple(i for i in range(_MAX_NODES) if mask[i // _ULONG_BITS] >> (i % _ULONG_BITS) & 1)


def _call(name: str, what: str, *args) -> int:
    ret = _libc.syscall(_nr(name), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def set_mempolicy(mode: str, nodes: Iterable[int] = ()) -> None:
    """Set the calling thread's memory policy (threads it creates inherit it)."""
    nodes = tuple(nodes)
    mask = _mask(nodes)
    # The kernel reads maxnode-1 bits (historical off-by-one that libnuma also pads).
    _call("set_mempolicy", f"set_mempolicy({mode}, nodes {list(nodes)})",
          ctypes.c_int(MODES[mode]), mask if nodes else None,
          ctypes.c_ulong(_MAX_NODES + 1 if nodes else 0))


def get_mempolicy() -> Tuple[str, Tuple[int, ...]]:
    """The calling thread's policy: (mode name, nodes)."""
    mode = ctypes.c_int()
    mask = _Mask()
    _call("get_mempolicy", "get_mempolicy()", ctypes.byref(mode), mask,
          ctypes.c_ulong(_MAX_NODES), None, ctypes.c_ulong(0))
    return MODE_NAMES.get(mode.value & 0xFF, str(mode.value)), _nodes(mask)


def vma_policy(addr: int) -> str:
    """The mode of the policy the mapping at ``addr`` carries itself (``MPOL_F_ADDR``);
    ``"default"`` when it has none (get_mempolicy(2))."""
    mode = ctypes.c_int()
    mask = _Mask()
    _call("get_mempolicy", f"get_mempolicy(MPOL_F_ADDR, {addr:#x})", ctypes.byref(mode),
          mask, ctypes.c_ulong(_MAX_NODES), ctypes.c_void_p(addr), ctypes.c_ulong(MPOL_F_ADDR))
    return MODE_NAMES.get(mode.value & 0xFF, str(mode.value))


def mems_allowed() -> Tuple[int, ...]:
    mode = ctypes.c_int()
    mask = _Mask()
    _call("get_mempolicy", "get_mempolicy(MPOL_F_MEMS_ALLOWED)", ctypes.byref(mode), mask,
          ctypes.c_ulong(_MAX_NODES), None, ctypes.c_ulong(MPOL_F_MEMS_ALLOWED))
    return _nodes(mask)


def mbind(start: int, length: int, mode: str, nodes: Iterable[int] = (),
          flags: int = 0) -> None:
    """Set the policy of the mappings in ``[start, start + length)`` (``"default"``
    removes it); with ``MPOL_MF_MOVE`` also move their pages that break it and that
    this process alone maps (mbind(2))."""
    nodes = tuple(nodes)
    _call("mbind", f"mbind({start:#x}+{length:#x}, {mode}, nodes {list(nodes)})",
          ctypes.c_ulong(start), ctypes.c_ulong(length), ctypes.c_int(MODES[mode]),
          _mask(nodes) if nodes else None, ctypes.c_ulong(_MAX_NODES + 1 if nodes else 0),
          ctypes.c_uint(flags))


def thread_ids(pid: Optional[int] = None) -> Tuple[int, ...]:
    import psutil
    return tuple(t.id for t in psutil.Process(pid).threads())
