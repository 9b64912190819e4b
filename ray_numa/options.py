"""The ``numa_bind`` value users write: parsing, validation, normalized form.

One immutable value, :class:`BindOptions`: the plugin validates with it on the
agent, the worker rebuilds it from JSON, the launcher helpers take it directly. The
JSON schema in ``schemas/`` mirrors :func:`parse` so that Ray rejects bad values on
the driver at ``.remote()`` / ``.options()`` time.
"""
from __future__ import annotations

import json
from collections import namedtuple
from typing import Any, Mapping, Tuple, Union

CPU_MODES = ("node", "socket", "exclusive", "core-complex")
MEMORY_POLICIES = ("bind", "preferred", "interleave", "none")
SPAN_POLICIES = ("union", "first", "skip")
DICT_KEYS = ("node", "cpus", "memory", "span", "strict", "migrate", "nic")
#: Variables ``nic`` may set, in the order they are set (see :mod:`ray_numa.nic_env`);
#: "auto" sets all but NCCL_IB_HCA, which NCCL does not need (it picks a NIC per GPU
#: itself, and its PXN routing uses the other GPUs' NICs).
NIC_VARS = ("UCX_NET_DEVICES", "NVSHMEM_HCA_LIST", "UCCL_P2P_RDMA_DEV", "NCCL_IB_HCA")
NIC_AUTO = NIC_VARS[:3]

VALID_FORMS = (
    'numa_bind accepts "auto" (the NUMA node of the GPU(s) Ray assigned), "off", '
    "null (unset: no binding), a NUMA node id (int 0-1023), or a dict with any of: "
    'node ("auto" | int | list of ints), '
    'cpus ("node" | "socket" | "exclusive" | "core-complex" | list of CPU ids), '
    'memory ("bind" | "preferred" | "interleave" | "none"), '
    'span ("union" | "first" | "skip": GPUs on several nodes), '
    "strict (bool: fail the actor if binding is impossible), "
    "migrate (bool: move pages touched before an in-process bind), "
    'nic ("auto" | "off" | {"vars": [names from ' + ", ".join(NIC_VARS) + ']}: '
    "point RDMA libraries at the GPU's nearest NIC; not with an explicit node)."
)


class OptionsError(ValueError):
    """An invalid ``numa_bind`` value; the message lists the valid forms."""


class BindOptions(namedtuple("BindOptions", "node cpus memory span strict migrate enabled nic",
                             defaults=("auto", "node", "bind", "union", False, True, True,
                                       ()))):
    """A validated ``numa_bind`` value (see :func:`parse` and :data:`VALID_FORMS`);
    ``enabled`` is False for "off" and for an unset value.

    torch's ``NumaOptions`` is a frozen dataclass; this is a ``collections.namedtuple``
    subclass, as immutable, because every GPU worker builds this class at its first
    assignment: a frozen dataclass costs ~4.4 million instructions to build (its
    generated methods are each compiled), a ``typing.NamedTuple`` ~1.3 million, this
    ~0.5 million (see ``policy.py``). The annotations document the fields.
    """
    __slots__ = ()
    node: Union[str, Tuple[int, ...]]    # default "auto"
    cpus: Union[str, Tuple[int, ...]]    # default "node"
    memory: str                    # default "bind"
    span: str                      # default "union"
    strict: bool                   # default False
    migrate: bool                  # default True
    enabled: bool                  # default True
    nic: Tuple[str, ...]           # variables naming the GPU's NIC(s); () = off (default)

    @property
    def auto(self) -> bool:
        return self.node == "auto"

    def to_json(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BindOptions":
        """Rebuild from :meth:`to_json`. Keys this version does not know (a newer
        agent's) are ignored, so a version skew never stops a worker from starting."""
        raw = json.loads(text)
        known = set(cls._fields)
        raw = {k: tuple(v) if isinstance(v, list) else v
               for k, v in raw.items() if k in known}
        return cls(**raw)


#: Largest ids accepted: node masks passed to the kernel hold 1024 nodes
#: (``syscalls``); CPU ids are capped only to keep values printable and sane.
MAX_NODE = 1023
MAX_CPU = 65535


def _show(value: Any) -> str:
    """``repr`` for a message, whatever the value (a huge int's repr raises)."""
    try:
        text = repr(value)
    except Exception:
        return f"<a {type(value).__name__} too large to print>"
    return text if len(text) <= 300 else text[:300] + "..."


def _fail(value: Any, detail: str) -> OptionsError:
    return OptionsError(f"invalid numa_bind value {_show(value)}: {detail}. {VALID_FORMS}")


def _as_int(value: Any) -> Any:
    """An int, or a whole float as JSON Schema's "integer" counts it (1.0); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _int_list(value: Any, what: str, whole: Any, maximum: int) -> Tuple[int, ...]:
    items = [_as_int(i) for i in (value if isinstance(value, (list, tuple)) else [value])]
    if not items or not all(i is not None and 0 <= i <= maximum for i in items):
        raise _fail(whole, f"{what} must be an int from 0 to {maximum} or a non-empty "
                    "list of them")
    return tuple(sorted(set(items)))


def _choice(value: Any, choices: Tuple[str, ...], what: str, whole: Any) -> str:
    if not isinstance(value, str) or value not in choices:
        raise _fail(whole, f"{what} must be one of {', '.join(choices)}")
    return value


def parse(value: Any) -> BindOptions:
    """Turn what the user wrote into :class:`BindOptions`, or raise OptionsError.

    Accepts exactly what ``schemas/numa_bind.json`` accepts (a property test checks
    it). ``None`` means unset: no binding, as if the key were absent.
    """
    if isinstance(value, BindOptions):
        return value
    try:
        return _parse(value)
    except OptionsError:
        raise
    except Exception as exc:   # a value no form anticipated: still a clear OptionsError
        raise _fail(value, f"{type(exc).__name__}: {exc}") from exc


def _parse(value: Any) -> BindOptions:
    if value is None:
        return BindOptions(enabled=False)
    if isinstance(value, str) and value == "auto":
        return BindOptions()
    if isinstance(value, str) and value == "off":
        return BindOptions(enabled=False)
    if _as_int(value) is not None:
        return BindOptions(node=_int_list(value, "node", value, MAX_NODE))
    if not isinstance(value, Mapping):
        raise _fail(value, "unrecognized form")
    unknown = sorted(_show(k) for k in value if not (isinstance(k, str) and k in DICT_KEYS))
    if unknown:
        raise _fail(value, f"unknown key(s) {', '.join(unknown)}")
    node = value.get("node", "auto")
    cpus = value.get("cpus", "node")
    for flag in ("strict", "migrate"):
        if flag in value and not isinstance(value[flag], bool):
            raise _fail(value, f"{flag} must be true or false")
    nic = _nic(value.get("nic", "off"), value)
    explicit = not (isinstance(node, str) and node == "auto")
    if nic and explicit:
        raise _fail(value, 'nic needs the GPU the process drives, and an explicit node '
                    'binds no GPU: drop "node" (the GPU\'s node is the default) or "nic"')
    return BindOptions(
        node=_int_list(node, "node", value, MAX_NODE) if explicit else "auto",
        cpus=(_choice(cpus, CPU_MODES, "cpus", value) if isinstance(cpus, str)
              else _int_list(cpus, "cpus", value, MAX_CPU)),
        memory=_choice(value.get("memory", "bind"), MEMORY_POLICIES, "memory", value),
        span=_choice(value.get("span", "union"), SPAN_POLICIES, "span", value),
        strict=value.get("strict", False),
        migrate=value.get("migrate", True),
        nic=nic,
    )


def _nic(value: Any, whole: Any) -> Tuple[str, ...]:
    """``"auto"`` -> :data:`NIC_AUTO`; ``"off"`` -> (); ``{"vars": [...]}`` -> those
    (at least one, each from :data:`NIC_VARS`), in :data:`NIC_VARS` order."""
    if isinstance(value, str) and value in ("auto", "off"):
        return NIC_AUTO if value == "auto" else ()
    names = value.get("vars") if isinstance(value, Mapping) and set(value) == {"vars"} else None
    if (not isinstance(names, (list, tuple)) or not names
            or not all(isinstance(n, str) and n in NIC_VARS for n in names)):
        raise _fail(whole, 'nic must be "auto", "off" or {"vars": [one or more of '
                    f"{', '.join(NIC_VARS)}]}}")
    return tuple(n for n in NIC_VARS if n in names)
