"""The VM tier: the in-guest tests (tests/vm/inside) on real multi-node kernels.

Each layout is one boot running one pytest session inside the guest, against this
machine's own Python and checkout (host root over 9p, read-only).
"""
import sys
from pathlib import Path

import pytest

from tests.vm import vmtier

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def vm_ready():
    missing = vmtier.missing_tools()
    if missing:
        pytest.skip(f"VM tier needs: apt-get install {' '.join(missing)}")
    try:
        vmtier.initramfs()
    except vmtier.VMUnavailable as exc:
        pytest.skip(str(exc))


def run_inside(layout: str, select: str = "tests/vm/inside") -> vmtier.Result:
    script = (f"cd {ROOT} && RAY_NUMA_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 "
              f"{sys.executable} -m pytest -q -p no:cacheprovider -rs {select}\n")
    return vmtier.boot(layout, script)


@pytest.mark.parametrize("layout,passed", [("two-node", 5), ("four-node", 2)])
def test_guest_kernel_checks(vm_ready, layout, passed):
    result = run_inside(layout)
    assert result.rc == 0, result.output[-4000:] + result.console[-2000:]
    assert f"{passed} passed" in result.output, result.output[-3000:]
