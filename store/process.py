"""Whether a process still runs: the one check for a pid read from a file or kept from a start.

Used by store/vectors.py (the milvus-lite host named in a store's info file) and deploy/ (supervisord,
the Milvus server a door relays to). A zombie (exited, not yet reaped by its parent) does not run.
"""

from __future__ import annotations

import psutil


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and is not a zombie (one owned by another user counts)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # gone (ZombieProcess is one too)
        return False
    except psutil.AccessDenied:
        return True
