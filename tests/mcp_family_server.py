"""A real stdio MCP server (the `mcp` SDK's own) that starts processes of its own, for tests of
what is left running once Moksori ends it.

    python tests/mcp_family_server.py KIND [KIND ...]

Each KIND starts one process when the server starts, and the tool `family` lists them
(`{"server": pid, "child": pid, ...}`, one key per KIND):

* `child`: a child in the server's own process group (`subprocess.Popen`, as most tools do);
* `stubborn`: the same, ignoring SIGTERM (only SIGKILL ends it);
* `setsid`: a child in a session of its own (`start_new_session=True`: `setsid()`), as a
  helper that detaches itself does; it leaves the server's process group;
* `daemon`: a double-forked daemon: the server's child calls `setsid()`, forks the daemon and
  exits, so the daemon is an orphan (its parent is init, or a subreaper) from the start;
* `deaf`: no process: the server itself ignores SIGTERM and stays after its stdin closes.

The server itself exits when its stdin closes (the SDK's stdio server), leaving its children.
With `FAMILY_PIDS_FILE` set it also writes that JSON there once they are started (for a server
that starts it itself: `moksori serve`). The tool `crash` ends the server at once (`os._exit`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

SLEEP = "import time; time.sleep(600)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
DAEMON = ("import os, sys, time\n"
          "os.setsid()\n"
          "if os.fork():\n"
          "    os._exit(0)\n"
          "sys.stdout.write(str(os.getpid()) + '\\n'); sys.stdout.flush(); sys.stdout.close(); os.close(1)\n"
          "time.sleep(600)\n")

server = MCPServer("moksori-family", log_level="CRITICAL")
family: dict[str, int] = {"server": os.getpid()}


def _start(kind: str) -> int:
    quiet = {"stdin": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if kind == "daemon":  # its first process exits at once: the daemon's pid comes on a pipe
        first = subprocess.Popen([sys.executable, "-c", DAEMON], stdout=subprocess.PIPE, **quiet)
        assert first.stdout is not None
        pid = int(first.stdout.readline())
        first.wait()
        return pid
    code = STUBBORN if kind == "stubborn" else SLEEP
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            start_new_session=kind == "setsid", **quiet).pid


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def family_pids() -> str:
    """The pids of this server and of the processes it started."""
    return json.dumps(family)


@server.tool()
def crash() -> str:
    """The server process dies while answering (its children stay)."""
    os._exit(3)


if __name__ == "__main__":
    kinds = sys.argv[1:]
    for kind in kinds:
        if kind != "deaf":
            family[kind] = _start(kind)
    if "deaf" in kinds:  # after the children are started: they would inherit SIG_IGN
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Thread(target=time.sleep, args=(600,)).start()  # not a daemon: keeps the process
    if os.environ.get("FAMILY_PIDS_FILE"):
        with open(os.environ["FAMILY_PIDS_FILE"] + ".tmp", "w") as f:
            json.dump(family, f)
        os.replace(os.environ["FAMILY_PIDS_FILE"] + ".tmp", os.environ["FAMILY_PIDS_FILE"])
    server.run("stdio")
