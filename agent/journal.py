"""The request journal: every request id this host accepted, until its window ends.

It makes execution at-most-once per host, across NATS redeliveries and agent
restarts: an id is written (and, for verbs that change something, synced to
disk) before the request runs, and its outcome when it ends. The ``status``
verb reads it. An entry left ``running`` by a crash is reported as
``interrupted``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

log = logging.getLogger("shoal.agent")

State = Literal["running", "finished", "interrupted"]


@dataclass(slots=True)
class JournalEntry:
    id: str
    verb: str
    expires: datetime
    state: State
    started_at: datetime
    finished_at: datetime | None = None
    ok: bool | None = None
    code: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "verb": self.verb,
            "expires": self.expires.isoformat(),
            "state": self.state,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "ok": self.ok,
            "code": self.code,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> JournalEntry:
        times = {
            key: datetime.fromisoformat(doc[key]) if doc.get(key) else None
            for key in ("expires", "started_at", "finished_at")
        }
        return cls(
            id=str(doc["id"]),
            verb=str(doc["verb"]),
            expires=times["expires"],  # type: ignore[arg-type]
            state=doc["state"],
            started_at=times["started_at"],  # type: ignore[arg-type]
            finished_at=times["finished_at"],
            ok=doc.get("ok"),
            code=doc.get("code"),
            message=doc.get("message"),
        )


class RequestJournal:
    """Request ids with their outcome; in memory, and in a file when a path is given."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, JournalEntry] = {}
        self._lines = 0
        # Kept open between appends (an open per append was the largest part of the
        # journal's cost per request); line-buffered, so every line reaches the OS
        # as it is written, as it did when the file was closed after each append.
        self._file: TextIO | None = None

    def load(self, now: datetime) -> None:
        """Read the file, mark unfinished entries interrupted, drop expired ones, compact."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    try:
                        doc = json.loads(line)
                        entry = JournalEntry.from_json(doc)
                    except (ValueError, KeyError, TypeError):
                        log.warning("journal %s: skipping unreadable line %d", self.path, number)
                        continue
                    self._entries[entry.id] = entry
        for entry in self._entries.values():
            if entry.state == "running":
                entry.state = "interrupted"
        self.compact(now)

    def get(self, request_id: str) -> JournalEntry | None:
        return self._entries.get(request_id)

    def start(self, entry: JournalEntry, *, durable: bool) -> None:
        self._entries[entry.id] = entry
        self._append(entry, sync=durable)

    def finish(
        self, request_id: str, now: datetime, *, ok: bool, code: str | None, message: str | None
    ) -> None:
        entry = self._entries.get(request_id)
        if entry is None:
            return
        entry.state, entry.finished_at = "finished", now
        entry.ok, entry.code, entry.message = ok, code, message
        self._append(entry, sync=False)

    def compact(self, now: datetime) -> None:
        """Forget expired ids and rewrite the file with the live ones."""
        self._entries = {k: e for k, e in self._entries.items() if e.expires >= now}
        if self.path is None:
            return
        self.close()  # the next append opens the rewritten file
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for entry in self._entries.values():
                f.write(json.dumps(entry.to_json()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self._lines = len(self._entries)

    def needs_compaction(self) -> bool:
        return self._lines > 2 * len(self._entries) + 1000

    def _append(self, entry: JournalEntry, *, sync: bool) -> None:
        if self.path is None:
            return
        try:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8", buffering=1)
            self._file.write(json.dumps(entry.to_json()) + "\n")
            if sync:
                os.fsync(self._file.fileno())
        except OSError:
            self.close()  # the next append starts from a new handle
            raise
        self._lines += 1

    def close(self) -> None:
        """Close the file (appends reopen it); idempotent."""
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                log.warning("journal %s: closing: %s", self.path, exc)

    def __len__(self) -> int:
        return len(self._entries)
