"""What /proc says about processes a test started (no psutil in the test install)."""

from __future__ import annotations

import os


def child_pids(pid: int) -> list[int]:
    """The live (not zombie) direct children of `pid`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    state, ppid = f.read().rsplit(") ", 1)[1].split()[:2]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if ppid == str(pid) and state != "Z":
                out.append(int(d))
    return out
