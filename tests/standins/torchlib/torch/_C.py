"""The ``torch._C`` device calls of torch 2.13.0's CUDA build, in Python.

CUDA's current device is per host thread (``cudaSetDevice``), so it is kept in a
``threading.local``. The device count comes from ``CUDA_VISIBLE_DEVICES`` at the first
call, as the CUDA runtime reads it once at initialisation (unset: all
``TORCH_STANDIN_DEVICES`` devices, default 8).
"""
from __future__ import annotations

import os
import threading
from typing import Optional

_state = threading.local()
_count: Optional[int] = None


def _cuda_getDeviceCount() -> int:
    global _count
    if _count is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        _count = (len([e for e in visible.split(",") if e.strip()]) if visible is not None
                  else int(os.environ.get("TORCH_STANDIN_DEVICES", "8")))
    return _count


def _check(index: int) -> None:
    if not 0 <= index < _cuda_getDeviceCount():
        raise RuntimeError("CUDA error: invalid device ordinal")


def _cuda_getDevice() -> int:
    _cuda_getDeviceCount()
    return getattr(_state, "device", 0)


def _cuda_setDevice(device: int) -> None:
    _check(device)
    _state.device = device


def _cuda_exchangeDevice(device: int) -> int:
    if device < 0:
        return -1
    previous = _cuda_getDevice()
    if device != previous:
        _cuda_setDevice(device)
    return previous


def _cuda_maybeExchangeDevice(device: int) -> int:
    return _cuda_exchangeDevice(device)


def _accelerator_getAccelerator():
    import torch
    return torch.device("cuda") if _cuda_getDeviceCount() > 0 else None


def _accelerator_getDeviceIndex() -> int:
    return _cuda_getDevice()


def _accelerator_setDeviceIndex(device: int) -> None:
    if device >= 0:           # "This function is a no-op if this device index is negative."
        _cuda_setDevice(device)


def _accelerator_exchangeDevice(device: int) -> int:
    return _cuda_exchangeDevice(device)


def _accelerator_maybeExchangeDevice(device: int) -> int:
    return _cuda_maybeExchangeDevice(device)
