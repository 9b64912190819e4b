"""Harness-only, for the VM tier (see ``ray_shims.fixed_agent_ports``): the raylet starts
this in place of a Ray agent script, as ``agent_stub.py FILE=PORT ... -- agent.py ARGS``.

It writes the agent's pre-selected port files at once, so the raylet's hard-coded 15 s
``WaitForPersistedPort`` (Ray 2.60 node_manager.cc) does not expire while the real agent
is still importing under TCG, then execs the real agent: same pid, so the raylet's
monitoring of its agents is unchanged. Stdlib only: importing Ray here would double the
agent's start.
"""
import os
import sys

split = sys.argv.index("--")
for item in sys.argv[1:split]:
    path, port = item.rsplit("=", 1)
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write(port)
        os.rename(path + ".tmp", path)
os.execv(sys.executable, [sys.executable, "-u", *sys.argv[split + 1:]])
