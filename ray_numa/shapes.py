"""The shape of JSON one ray-numa process hands another: the agent's GPU table and
plans (read by workers), a worker's published binding (read by the audit).

Each may come from another ray-numa version, a hand-edited ``RAY_NUMA_*`` variable or
another user, so its reader checks every field's type before use and, on a mismatch,
does without it (asks NVML, plans itself, distrusts the record), rather than failing
later on a field it misread. JSON's own types are compared exactly: ``true`` is not an
int here, as it is for ``isinstance``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

#: (types the value may have, types its items must have or None, its length or None)
Shape = Tuple[Tuple[type, ...], Optional[Tuple[type, ...]], Optional[int]]
NONE = type(None)


def shape(kinds: Any, items: Any = None, length: Optional[int] = None) -> Shape:
    as_tuple = lambda k: k if isinstance(k, tuple) else (k,)    # noqa: E731
    return as_tuple(kinds), None if items is None else as_tuple(items), length


def problem(record: Any, fields: Mapping[str, Shape]) -> str:
    """Why ``record`` does not have ``fields``' shape ("" if it does)."""
    if type(record) is not dict:
        return "not a JSON object"
    for field, (kinds, items, length) in fields.items():
        value = record.get(field)
        if type(value) not in kinds or (items is not None and not all(
                type(v) in items for v in value)) or (
                length is not None and len(value) != length):
            return (f"its field {field!r} is not a {kinds[0].__name__}"
                    + (f" of {items[0].__name__}" if items else "")
                    + (f" of length {length}" if length is not None else ""))
    return ""
