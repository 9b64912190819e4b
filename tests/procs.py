"""Run Python snippets in fresh child processes and read back what they really have.

Binding changes the process that does it, so every real-kernel check runs in a child
and reports its own ``/proc`` view as JSON on its last stdout line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = "import json, os, threading\nfrom tests.inspect_proc import *\n"


def run_child(code: str, env: Optional[Dict[str, str]] = None, check: bool = True,
              argv_prefix=()) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run([*argv_prefix, sys.executable, "-c",
                           PRELUDE + textwrap.dedent(code)],
                          capture_output=True, text=True, env=full_env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def child_report(code: str, **kwargs) -> Dict:
    proc = run_child(code, **kwargs)
    return json.loads(proc.stdout.strip().splitlines()[-1])
