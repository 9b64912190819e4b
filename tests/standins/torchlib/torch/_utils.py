"""``torch._utils._get_device_index`` of torch 2.13.0 (the CUDA-only branch)."""
from __future__ import annotations

from typing import Any

import torch


def _get_current_device_index() -> int:
    return torch.cuda.current_device()


def _get_device_index(device: Any, optional: bool = False, allow_cpu: bool = False) -> int:
    if isinstance(device, str):
        device = torch.device(device)
    device_idx = None
    if isinstance(device, torch.device):
        if not allow_cpu and device.type == "cpu":
            raise ValueError(f"Expected a non cpu device, but got: {device}")
        device_idx = -1 if device.type == "cpu" else device.index
    if isinstance(device, int):
        device_idx = device
    if device_idx is None:
        if optional:
            device_idx = _get_current_device_index()
        else:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, "
                             f"but got:{device}")
    return device_idx
