"""`ray job submit` with numa_bind, against a head started with `ray start`.

    eval "$(ray-numa env)" && ray start --head
    ray job submit --runtime-env-json '{"numa_bind": "auto"}' -- python job_report.py

Ray 2.60's `ray start` turns token authentication on when RAY_AUTH_MODE is unset and
a token exists (~/.ray/auth_token, which Ray 2.60's own local `ray.init()` writes). The
job CLI sends the token only when RAY_AUTH_MODE=token is set in its own environment;
without it the dashboard answers "Unauthorized: Missing authentication token". So
this script sets RAY_AUTH_MODE=token for the client exactly when the head turned
authentication on, and works either way. Its head has ports and a temp dir of its
own and is stopped by its process id at the end (never `ray stop`, which stops every
Ray of this user). The job CLI needs `ray[default]`.

    python examples/job_submit.py --fixture dgx-h100
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, arguments, use_fixture

import ray_numa

HERE = Path(__file__).resolve().parent
PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port",
              "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
              "--runtime-env-agent-port", "--metrics-export-port",
              "--node-manager-port", "--object-manager-port")


def free_ports(n: int) -> list:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def head_uses_token_auth(env: dict) -> bool:
    """Ray's rule for `ray start` (ray/_private/authentication/
    authentication_token_setup.py, maybe_enable_token_auth_if_token_available): an
    explicit RAY_AUTH_MODE wins; unset, a token on hand turns token mode on."""
    mode = env.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    try:
        from ray._raylet import AuthenticationTokenLoader   # Ray >= 2.5x
    except ImportError:
        return False                                        # no token auth in this Ray
    return AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)


args = arguments(__doc__)
gpus = args.gpus if args.gpus is not None else (use_fixture(args.fixture)
                                                 if args.fixture else 2)
print(f"=== job_submit.py: " + (f"on a {args.fixture} fixture machine ==="
                                 if args.fixture else "on this machine ==="), flush=True)
env = dict(os.environ, **ray_numa.plugin_env(),         # eval "$(ray-numa env)"
           PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
if head_uses_token_auth(env):
    env["RAY_AUTH_MODE"] = "token"      # what the job CLI needs to send the token
print("token authentication:", "on" if env.get("RAY_AUTH_MODE") == "token" else "off")
ports = free_ports(len(PORT_FLAGS))
temp = tempfile.mkdtemp(prefix="rn-job-")     # the head's session and logs (~3 MB)
print("Ray temp dir:", temp, flush=True)
ray_bin = str(Path(sys.executable).with_name("ray"))
head = subprocess.Popen(
    [ray_bin, "start", "--head", "--block", "--disable-usage-stats",
     "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=16",
     f"--num-gpus={gpus}", f"--temp-dir={temp}",
     *(f"{flag}={port}" for flag, port in zip(PORT_FLAGS, ports))],
    env=env, stdout=subprocess.DEVNULL, stderr=open(Path(temp) / "head.err", "w"))
address = f"http://127.0.0.1:{ports[1]}"
failed = True
try:
    for _ in range(180):          # the dashboard's job API answers once the head is up
        ready = subprocess.run([ray_bin, "job", "list", "--address", address], env=env,
                               capture_output=True, text=True, timeout=60)
        if ready.returncode == 0 or head.poll() is not None:
            break
        time.sleep(1)
    job = subprocess.run(
        [ray_bin, "job", "submit", "--address", address,
         "--runtime-env-json", '{"numa_bind": "auto"}', "--",
         sys.executable, str(HERE / "job_report.py")],
        env=env, capture_output=True, text=True, timeout=600)
    print("\n".join(line for line in job.stdout.splitlines() if "job actor" in line))
    failed = job.returncode != 0
    if failed:
        print(job.stdout[-2000:], job.stderr[-2000:], file=sys.stderr)
finally:
    head.terminate()              # `ray start --block` stops its head on SIGTERM
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    if failed:
        print(f"the head's logs are kept in {temp}", file=sys.stderr)
    else:
        shutil.rmtree(temp, ignore_errors=True)
sys.exit(job.returncode)
