"""``torch.cuda``'s device selection, as in torch 2.13.0 ``torch/cuda/__init__.py``."""
from __future__ import annotations

from typing import Any

import torch
import torch._C

from ._utils import _get_device_index

_exchange_device = torch._C._cuda_exchangeDevice
_maybe_exchange_device = torch._C._cuda_maybeExchangeDevice


def is_available() -> bool:
    return torch._C._cuda_getDeviceCount() > 0


def device_count() -> int:
    return torch._C._cuda_getDeviceCount()


def current_device() -> int:
    return torch._C._cuda_getDevice()


class device:
    r"""Context-manager that changes the selected device.

    Args:
        device (torch.device or int): device index to select. It's a no-op if
            this argument is a negative integer or ``None``.
    """

    def __init__(self, device: Any):
        self.idx = _get_device_index(device, optional=True)
        self.prev_idx = -1

    def __enter__(self):
        self.prev_idx = torch.cuda._exchange_device(self.idx)

    def __exit__(self, type: Any, value: Any, traceback: Any):
        self.idx = torch.cuda._maybe_exchange_device(self.prev_idx)
        return False


class device_of(device):
    def __init__(self, obj):
        idx = obj.get_device() if obj.is_cuda else -1
        super().__init__(idx)


def set_device(device: Any) -> None:
    device = _get_device_index(device)
    if device >= 0:
        torch._C._cuda_setDevice(device)
