"""What a stdio MCP server leaves running when it is ended: its process group and its descendants.

The SDK's shutdown (close stdin, 2 s, then SIGTERM and SIGKILL to the server's process group)
signals the group only when the server itself outlives the 2 s. A server that exits on EOF, as
the SDK's own servers do, left every process it had started running: its children (same
group) and any helper it had put in a session of its own (`setsid`, `start_new_session`).
`ProcessFamily` is taken just before the server is asked to stop, while its children are still
its own: the server's process group (its pid: it is started with `start_new_session=True`) and,
on Linux, every descendant found under it in /proc, also those in sessions of their own, each
pinned by a pidfd (a pid reused later is never signalled). `end()` then sends SIGTERM to all of
them, and SIGKILL to what is left after `grace_s`.

Out of reach: a daemon that double-forks (its parent exits at once, so it is already init's
child, or a subreaper's, when the family is taken), and anything started after that moment
outside the group. Catching those takes the whole service's cgroup (systemd's
`KillMode=control-group`, a container): PR_SET_CHILD_SUBREAPER would make Moksori the parent
of every orphan, to reap without knowing whose it was, and a cgroup per server needs a
delegated cgroup tree. Elsewhere than Linux only the process group is ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

log = logging.getLogger("moksori.tools.mcp_client")

GRACE_S = 2.0  # from SIGTERM to SIGKILL, as the SDK's own escalation
KILL_WAIT_S = 1.0  # after SIGKILL: the kernel ends a process at its next run, a moment later
POLL_S = 0.02


@dataclass(frozen=True)
class _Stat:
    ppid: int
    pgrp: int
    start: int  # clock ticks after boot: with the pid, names one process for good


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # after the command's ")": state ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime
    return _Stat(int(fields[1]), int(fields[2]), int(fields[19])) if len(fields) > 19 else None


def _processes() -> Iterator[tuple[int, _Stat]]:
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := _stat(int(name))) is not None:
                yield int(name), st


def _members(leader: int) -> list[tuple[int, _Stat]]:
    """The processes of `leader`'s group and every descendant of `leader` (not `leader` itself)."""
    table = dict(_processes())
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st.ppid, []).append(pid)
    found = {pid for pid, st in table.items() if st.pgrp == leader}
    todo = [leader]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    found.discard(leader)
    return [(pid, table[pid]) for pid in sorted(found)]


def _pin(pid: int, seen: _Stat) -> int | None:
    """A pidfd for `pid` if it is still the process seen in /proc (not a new one with its pid)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone already (or no pidfd here)
        return None
    now = _stat(pid)
    if now is None or now.start != seen.start:
        os.close(fd)
        return None
    return fd


def _exited(fd: int) -> bool:
    """A pidfd turns readable when its process ends (a zombie not reaped yet has ended)."""
    return bool(select.select([fd], [], [], 0)[0])


class ProcessFamily:
    """A stdio MCP server's process group and descendants, taken at one moment (`of`)."""

    def __init__(self, leader: int, pinned: dict[int, int] | None, name: str = "") -> None:
        self.leader = leader  # the server: its pid is its process group's id
        self.name = name or str(leader)
        self._tracked = pinned is not None  # Linux: the members are known, and followed by pidfd
        self._pinned = pinned or {}  # pid -> pidfd: the members found, the server not among them

    @classmethod
    def of(cls, leader: int, name: str = "") -> ProcessFamily:
        """The family of the server `leader` (`name`: for the log) now (reads /proc: off the loop)."""
        if not (hasattr(os, "pidfd_open") and os.path.isdir("/proc")):
            return cls(leader, None, name)
        pinned: dict[int, int] = {}
        for pid, st in _members(leader):
            fd = _pin(pid, st)
            if fd is not None:
                pinned[pid] = fd
        return cls(leader, pinned, name)

    @property
    def pids(self) -> list[int]:
        return sorted(self._pinned)

    def _left(self) -> dict[int, int]:
        return {pid: fd for pid, fd in self._pinned.items() if not _exited(fd)}

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.leader, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.leader, sig)  # the whole group at once, also members started since `of`
        for fd in self._left().values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                signal.pidfd_send_signal(fd, sig)

    def _running(self) -> bool:
        # where members are followed by pidfd, only they are waited for: a group whose last
        # members are zombies (init has not reaped them yet) still answers `killpg`
        return bool(self._left()) if self._tracked else self._group_alive()

    async def end(self, grace_s: float = GRACE_S) -> list[int]:
        """SIGTERM to the group and every pinned member, SIGKILL to what is left after `grace_s`;
        the pids that had to be killed."""
        try:
            self._signal(signal.SIGTERM)
            with anyio.move_on_after(grace_s):
                while self._running():
                    await anyio.sleep(POLL_S)
                return []
            killed = sorted(self._left())
            self._signal(signal.SIGKILL)
            with anyio.move_on_after(KILL_WAIT_S):  # so that none is left when `end` returns
                while self._running():
                    await anyio.sleep(POLL_S)
            log.warning("MCP server %s: %s still running %g s after SIGTERM: killed", self.name,
                        "processes " + ", ".join(map(str, killed)) if killed else "its process group", grace_s)
            return killed
        finally:
            self.close()

    def close(self) -> None:
        for fd in self._pinned.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pinned = {}
