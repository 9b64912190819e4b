"""``torch.accelerator``'s device selection, as in torch 2.13.0."""
from __future__ import annotations

import functools
import warnings
from typing import Any, Optional

import torch

from ._utils import _get_device_index


def device_count() -> int:
    return torch._C._cuda_getDeviceCount()


def is_available() -> bool:
    return device_count() > 0


def current_accelerator(check_available: bool = False) -> Optional["torch.device"]:
    if (acc := torch._C._accelerator_getAccelerator()) is not None:
        if (not check_available) or (check_available and is_available()):
            return acc
    return None


def current_device_index() -> int:
    return torch._C._accelerator_getDeviceIndex()


def set_device_index(device: Any, /) -> None:
    device_index = _get_device_index(device, optional=False)
    torch._C._accelerator_setDeviceIndex(device_index)


def _deprecated(function):   # typing_extensions.deprecated(..., FutureWarning) in torch
    @functools.wraps(function)
    def wrapper(*args):
        warnings.warn("Use `set_device_index` instead.", FutureWarning, stacklevel=2)
        return function(*args)
    return wrapper


set_device_idx = _deprecated(set_device_index)


class device_index:
    def __init__(self, device: Optional[int], /) -> None:
        self.idx = device
        self.prev_idx = -1

    def __enter__(self) -> None:
        if self.idx is not None:
            self.prev_idx = torch._C._accelerator_exchangeDevice(self.idx)

    def __exit__(self, *exc_info: object) -> None:
        if self.idx is not None:
            torch._C._accelerator_maybeExchangeDevice(self.prev_idx)
