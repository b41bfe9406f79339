"""Naming the rank that failed when the launcher cannot.

When one rank dies, the DeepSpeed launcher (0.19.8, ``launcher/launch.py``) terminates the others
and logs ``[cmd] exits with return code = N`` with the command line of the *last rank it spawned*,
whichever rank failed; a rank killed by a signal (the OOM killer, SIGKILL) cannot say anything
itself. So every rank learns the (rank, host, pid) of all ranks once, right after the process group
exists, and a survivor that is stopped (SIGTERM from the launcher) or whose collective fails
names the ranks on its host whose processes are gone.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import torch.distributed as dist

_PEERS: list[tuple[int, str, int]] = []  # (rank, host, pid) of every rank, by rank


def record_peers() -> None:
    """All-gather every rank's (rank, host, pid); call once, collectively, after the process group
    exists."""
    peers: list = [None] * dist.get_world_size()
    dist.all_gather_object(peers, (dist.get_rank(), socket.gethostname(), os.getpid()))
    _PEERS[:] = peers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (the pid was reused)
        return True
    # A dead child the launcher has not reaped yet still answers kill(pid, 0): a zombie, state Z.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gone_peers() -> list[tuple[int, str, int]]:
    """(rank, host, pid) of the other ranks on this host whose processes no longer run."""
    host, me = socket.gethostname(), os.getpid()
    return [p for p in _PEERS if p[1] == host and p[2] != me and not _alive(p[2])]


def describe_gone_peers() -> str:
    """One sentence for an error message: which ranks died, or that none on this host did."""
    if not _PEERS:
        return "the ranks were not recorded yet"
    gone = gone_peers()
    others = sorted({p[1] for p in _PEERS} - {socket.gethostname()})
    elsewhere = f" (ranks on {', '.join(others)} not checked from here)" if others else ""
    if not gone:
        return f"every other rank on this host is still running{elsewhere}"
    named = ", ".join(f"rank {r} (pid {pid})" for r, _, pid in gone)
    return f"{named} on this host exited first: that is the rank that failed{elsewhere}"


def exit_on_sigterm(rank: int) -> None:
    """On SIGTERM (the launcher stopping the survivors), say which rank died, then exit at once
    with 128 + 15 as the default action would. Checkpoints are written atomically, so exiting
    at any moment loses nothing."""

    def handler(signum, frame):
        print(
            f"train.py [rank {rank}]: stopped by SIGTERM; {describe_gone_peers()}",
            file=sys.stderr,
            flush=True,
        )
        os._exit(128 + signum)

    if threading.current_thread() is threading.main_thread():  # signal() refuses other threads
        signal.signal(signal.SIGTERM, handler)
