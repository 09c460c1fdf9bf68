"""core.process: SIGTERM handling of serve's children, in a real child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The main thread keeps taking the Ending's lock (as it does while it handles a stop) while
# SIGTERMs arrive: systemd, `timeout` and `kill -- -PGID` signal every process of the group,
# and serve forwards the signal too, so a child gets two or more.
_CHILD = """
import os, sys, time
from core.process import Ending, take_sigterm
ending = Ending()
take_sigterm(lambda: ending.request("SIGTERM", 30))
print("ready", flush=True)
end = time.monotonic() + 3
while time.monotonic() < end:
    ending.request("busy", 60)
print("done", flush=True)
os._exit(0)
"""


def test_sigterms_in_quick_succession_never_deadlock_the_child() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for _ in range(300):
            os.kill(child.pid, signal.SIGTERM)
            time.sleep(0.002)
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == 0 and out.strip() == "done"
