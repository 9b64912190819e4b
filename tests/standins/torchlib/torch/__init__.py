"""A stand-in for the parts of ``torch`` that select a CUDA device, nothing more.

CI has no torch (its wheel is gigabytes). ray-numa's contract with torch is its
public device-selection API, so this package exposes exactly those names with the
behaviour and the ``torch._C`` calls of torch 2.13.0 (transcribed from the wheel's
``torch/__init__.py``, ``torch/_utils.py``, ``torch/cuda/__init__.py``,
``torch/cuda/_utils.py``, ``torch/accelerator/__init__.py`` and
``torch/accelerator/_utils.py``): ``torch.cuda.set_device``, ``torch.cuda.device``,
``torch.cuda.device_of``, ``torch.accelerator.set_device_index`` (and its deprecated
alias), ``torch.accelerator.device_index``, their index resolvers, and the
``torch._C`` functions they end in (:mod:`torch._C` here keeps CUDA's per-thread
current device). Put ``tests/standins/torchlib`` first on ``sys.path`` to use it.
``tests/test_follow.py::test_real_torch_*`` runs the same checks on the real torch.
"""
from __future__ import annotations

from typing import Any, Optional

STANDIN = True


class device:
    """``torch.device``: "cuda", "cuda:1", ("cuda", 1), "cpu"."""

    def __init__(self, type: Any, index: Optional[int] = None) -> None:
        if isinstance(type, device):
            type, index = type.type, type.index
        elif isinstance(type, str) and ":" in type:
            if index is not None:
                raise RuntimeError(f"type (string) must not include an index because index "
                                   f"was passed explicitly: {type}")
            type, _, text = type.partition(":")
            if not text.isdigit():
                raise RuntimeError(f"Invalid device string: '{type}:{text}'")
            index = int(text)
        if type not in ("cpu", "cuda", "meta"):
            raise RuntimeError(f"Expected one of cpu, cuda, meta device type at start of "
                               f"device string: {type}")
        if index is not None and index < 0:
            raise RuntimeError("Device index must not be negative")
        self.type, self.index = type, index

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __repr__(self) -> str:
        return f"device(type='{self.type}'" + (f", index={self.index})" if self.index
                                               is not None else ")")

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


class jit:
    @staticmethod
    def is_scripting() -> bool:
        return False


from . import _C  # noqa: E402
from . import cuda  # noqa: E402  (torch/__init__.py imports both eagerly)
from . import accelerator  # noqa: E402
