"""A stand-in for ``pynvml`` driven by a fixture's ``nvml.json``.

It has the same function names, returns the same structures (``nvmlPciInfo_t``) and
raises pynvml's own error classes with the codes the real library uses, so code that
works against it works against a driver. Only what ray-numa calls is provided.

``nvml.json``::

    {"devices": [{"uuid": "GPU-…", "name": "NVIDIA H100 80GB HBM3",
                  "bus_id": "00000000:18:00.0", "compute_capability": [9, 0],
                  "numa_node": 2,            # omit: NOT_SUPPORTED, as on x86 boards
                  "mig_devices": ["MIG-…"],
                  "handle_error": "NO_PERMISSION",     # optional, see below
                  "attribute_error": {"nvmlDeviceGetName": "UNKNOWN"}}],   # optional
     "init_error": "LIBRARY_NOT_FOUND"}     # optional: nvmlInit fails so

``handle_error`` names the ``NVML_ERROR_*`` code with which the device's handle is
refused: NVML counts every GPU of the machine, but a process whose device cgroup
denies one (Slurm ``ConstrainDevices``) gets ``NVML_ERROR_NO_PERMISSION`` for it,
raised by pynvml as ``NVMLError_NoPermission``. ``attribute_error`` maps a query on
an opened handle to the code it fails with for that device (``GPU_IS_LOST``,
``UNKNOWN``; ``FUNCTION_NOT_FOUND`` for ``nvmlDeviceGetPciInfo`` on an old driver).
``init_error`` is what ``nvmlInit``
raises, e.g. ``LIBRARY_NOT_FOUND`` where no NVIDIA driver is installed.

With ``RAY_NUMA_FAKE_NVML_LOG=<file>`` every ``nvmlInit`` appends its pid to the
file, so tests can count NVML initializations per process (agent vs workers).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pynvml

from .environment import FAKE_NVML_LOG_ENV

NVMLError = pynvml.NVMLError


@dataclasses.dataclass(eq=False)
class _Handle:
    spec: Dict[str, Any]
    parent: Optional["_Handle"] = None
    mig_uuid: str = ""


def _code(name: str) -> int:
    """``"NO_PERMISSION"`` -> ``pynvml.NVML_ERROR_NO_PERMISSION``."""
    return getattr(pynvml, f"NVML_ERROR_{name}")


def _usable(handle: _Handle) -> _Handle:
    """The handle, unless the fixture says NVML refuses this device."""
    if handle.spec.get("handle_error"):
        raise NVMLError(_code(handle.spec["handle_error"]))
    return handle


def _query(handle: _Handle, name: str) -> Dict[str, Any]:
    """The device's spec, unless the fixture says query ``name`` fails for it."""
    code = handle.spec.get("attribute_error", {}).get(name)
    if code:
        raise NVMLError(_code(code))
    return handle.spec


class FakeNvml:
    """Module-like object: ``nvml.nvmlDeviceGetCount()`` etc."""

    NVMLError = pynvml.NVMLError
    NVMLError_NoPermission = pynvml.NVMLError_NoPermission

    def __init__(self, path: Path):
        self._path = Path(path)
        self._devices: List[_Handle] = []
        self._initialized = 0

    def nvmlInit(self) -> None:
        data = json.loads(self._path.read_text())
        if data.get("init_error"):
            raise NVMLError(_code(data["init_error"]))
        self._devices = [_Handle(spec=d) for d in data.get("devices", [])]
        self._initialized += 1
        log = os.environ.get(FAKE_NVML_LOG_ENV)
        if log:   # one short O_APPEND write per call: safe across processes
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")

    def nvmlShutdown(self) -> None:
        if not self._initialized:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self._initialized -= 1

    def _check(self) -> None:
        if not self._initialized:
            raise NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)

    def nvmlDeviceGetCount(self) -> int:
        self._check()
        return len(self._devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check()
        if not 0 <= index < len(self._devices):
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _usable(self._devices[index])

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> _Handle:
        self._check()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for dev in self._devices:
            if dev.spec["uuid"] == uuid:
                return _usable(dev)
            if uuid in dev.spec.get("mig_devices", []):
                return _Handle(spec=dev.spec, parent=_usable(dev), mig_uuid=uuid)
        raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        _query(handle, "nvmlDeviceGetUUID")
        return handle.mig_uuid or handle.spec["uuid"]

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        _query(handle, "nvmlDeviceGetName")
        return handle.spec.get("name", "NVIDIA GPU")

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> "pynvml.nvmlPciInfo_t":
        _query(handle, "nvmlDeviceGetPciInfo")
        info = pynvml.nvmlPciInfo_t()
        info.busId = handle.spec["bus_id"].encode()
        return info

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle):
        _query(handle, "nvmlDeviceGetCudaComputeCapability")
        major, minor = handle.spec.get("compute_capability", [9, 0])
        return major, minor

    def nvmlDeviceGetNumaNodeId(self, handle: _Handle) -> int:
        _query(handle, "nvmlDeviceGetNumaNodeId")
        if "numa_node" not in handle.spec:
            raise NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return handle.spec["numa_node"]

    def nvmlDeviceIsMigDeviceHandle(self, handle: _Handle) -> bool:
        return handle.parent is not None

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, handle: _Handle) -> _Handle:
        if handle.parent is None:
            raise NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return handle.parent

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:
        _query(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return 7 if handle.spec.get("mig_devices") else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, index: int) -> _Handle:
        _query(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        migs = handle.spec.get("mig_devices", [])
        if not 0 <= index < len(migs):
            raise NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return _Handle(spec=handle.spec, parent=handle, mig_uuid=migs[index])
