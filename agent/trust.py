"""The agent's trust file on disk (its model is :mod:`shoal.protocol.trust`).

It is reloaded when it changes (checked every few seconds) or on SIGHUP. A
file that fails to load on reload leaves the previous trust in force: a typo
never opens the host, and never locks every key out silently either.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from shoal.protocol.trust import TrustDocument, TrustEntry, TrustError, parse_trust, render_trust

log = logging.getLogger("shoal.agent")

__all__ = ["TrustDocument", "TrustEntry", "TrustError", "TrustStore", "parse_trust", "render_trust"]


@dataclass(frozen=True, slots=True)
class _Stamp:
    mtime_ns: int
    size: int
    inode: int


class TrustStore:
    """Trusted keys, loaded from a file and reloaded when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, TrustEntry] = {}
        self._stamp: _Stamp | None = None

    def _read_stamp(self) -> _Stamp:
        st = self.path.stat()
        return _Stamp(st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> None:
        """Load the file; raises :class:`TrustError` (used at start, where it must be right)."""
        try:
            stamp = self._read_stamp()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TrustError(f"cannot read trust file {self.path}: {exc.strerror or exc}") from exc
        self._entries = parse_trust(text, str(self.path))
        self._stamp = stamp
        log.info("trust: %d key(s) from %s", len(self._entries), self.path)

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Reload when the file changed. On error keep the previous trust and log it."""
        try:
            stamp = self._read_stamp()
        except OSError as exc:
            log.error("trust file %s unreadable (%s); keeping the previous trust", self.path, exc)
            return False
        if not force and stamp == self._stamp:
            return False
        try:
            self.load()
        except TrustError as exc:
            self._stamp = stamp  # don't log the same broken file every few seconds
            log.error("%s; keeping the previous trust (%d keys)", exc, len(self._entries))
            return False
        return True

    def lookup(self, public_key: str) -> TrustEntry | None:
        return self._entries.get(public_key)

    def __len__(self) -> int:
        return len(self._entries)
