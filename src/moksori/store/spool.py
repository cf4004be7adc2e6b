"""The writer's queue on disk: records still unwritten when the server stops (the database is
down) are kept in a file of the data dir and written at the next start.

    spool = Spool(data_dir / "store-spool")
    records = spool.claim(limit)      # at start: every spooled record, oldest first
    ...                               # (written, or spooled again)
    spool.release()                   # the claimed files go
    spool.save(unwritten)             # at a clean stop

A file is `pending-<database>-<ns>-<pid>.jsonl`, one record a line (`encode`/`decode`, a pure
codec); `<database>` is a digest of the database URL it was meant for (`database_key`), so a data
dir whose store URL changed (or one shared by tests on different databases) never writes a queue
into the wrong database: files of another database are left alone, with a warning. Each file is
written whole and renamed into place, so a file is complete or absent. Workers sharing a data dir
each claim the files no other one holds (an exclusive `flock`, released by the kernel if the
process dies): a file claimed by a worker killed before it wrote them is claimed again at the
next start. Replaying a record already written changes nothing (the writes are idempotent), so
a file is never needed twice but may be read twice. `claim` takes at most `limit` records
(`MOKSORI_STORE_MAX_PENDING`); past that, the newest are dropped with an error that says how many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import IO, Any

from moksori.accounting import TurnUsage
from moksori.store.records import (
    AgentReply,
    ConversationStarted,
    ItemDeleted,
    MCPCallRecord,
    Record,
    ReplyHeard,
    ReplyProgress,
    SummaryUpdated,
    ToolCallRecord,
    ToolResultRecord,
    UsageRecord,
    UserTurn,
    UserTurnRemoved,
)

__all__ = ["Spool", "encode", "decode", "SpoolError", "database_key"]

log = logging.getLogger("moksori.store")

TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    ConversationStarted, UserTurn, AgentReply, ToolCallRecord, ToolResultRecord, MCPCallRecord, ReplyHeard,
    ReplyProgress, UserTurnRemoved, ItemDeleted, UsageRecord, SummaryUpdated)}


class SpoolError(ValueError):
    """A spooled line that is not a record."""


def encode(rec: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(rec).__name__}
    for f in dataclasses.fields(rec):
        value = getattr(rec, f.name)
        out[f.name] = dataclasses.asdict(value) if isinstance(value, TurnUsage) else value
    return out


def decode(data: Any) -> Record:
    if not isinstance(data, dict) or data.get("type") not in TYPES:
        raise SpoolError("not a spooled record")
    cls = TYPES[data["type"]]
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in data.items() if k in names}
    usage = kw.get("usage")
    try:
        if isinstance(usage, dict):
            usage_names = {f.name for f in dataclasses.fields(TurnUsage)}
            kw["usage"] = TurnUsage(**{k: v for k, v in usage.items() if k in usage_names})
        rec: Record = cls(**kw)
    except TypeError as e:
        raise SpoolError(f"a {data['type']} without its fields ({e})") from None
    return rec


def database_key(url: str) -> str:
    """Which database a spool file is for: a digest of its URL (password left out)."""
    from moksori.store.db import redacted

    return hashlib.sha256(redacted(url).encode("utf-8")).hexdigest()[:16]


class Spool:
    def __init__(self, directory: Path, database: str = "default") -> None:
        self.dir = Path(directory).expanduser()
        self.database = database
        self._claimed: list[tuple[Path, IO[bytes]]] = []

    def files(self) -> list[Path]:
        """This database's spool files, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob(f"pending-{self.database}-*.jsonl"))

    def others(self) -> list[Path]:
        """Spool files meant for other databases (left alone)."""
        if not self.dir.is_dir():
            return []
        mine = set(self.files())
        return [p for p in sorted(self.dir.glob("pending-*.jsonl")) if p not in mine]

    def claim(self, limit: int) -> list[Record]:
        """Every record of the spool files no other process holds, oldest first (at most `limit`)."""
        out: list[Record] = []
        dropped = bad = 0
        others = self.others()
        if others:
            log.warning("store: %d spool files in %s are for another database (another MOKSORI_STORE_URL); "
                        "left alone", len(others), self.dir)
        for path in self.files():
            fh = self._lock(path)
            if fh is None:
                continue
            self._claimed.append((path, fh))
            for line in fh.read().decode("utf-8", "replace").splitlines():
                if not line.strip():
                    continue
                try:
                    rec = decode(json.loads(line))
                except (ValueError, SpoolError):
                    bad += 1
                    continue
                if len(out) >= limit:
                    dropped += 1
                    continue
                out.append(rec)
        if bad:
            log.error("store: %d unreadable lines in the spool %s were skipped", bad, self.dir)
        if dropped:
            log.error("store: %d spooled records dropped: more than MOKSORI_STORE_MAX_PENDING (%d)", dropped, limit)
        if out:
            log.warning("store: %d records spooled by an earlier run (%d files) are queued for writing",
                        len(out), len(self._claimed))
        return out

    @staticmethod
    def _lock(path: Path) -> IO[bytes] | None:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - held open (locked) until release()
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fh.fileno()).st_nlink == 0:  # released (written and removed) by its claimer meanwhile
                raise BlockingIOError
        except OSError:
            fh.close()
            return None
        return fh

    @property
    def claimed(self) -> int:
        return len(self._claimed)

    def release(self) -> None:
        """The claimed files' records are written (or spooled again): remove the files."""
        for path, fh in self._claimed:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fh.close()
        self._claimed = []

    def save(self, records: list[Record]) -> Path | None:
        """Write `records` to a new spool file (complete or absent). None if there are none."""
        if not records:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"pending-{self.database}-{time.time_ns():020d}-{os.getpid()}.jsonl"
        tmp = self.dir / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            for rec in records:
                fh.write(json.dumps(encode(rec), ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        path = self.dir / name
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename itself, durable
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return path
