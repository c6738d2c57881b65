"""The agent's trust file: which public keys may send requests, and with which role.

A TOML file of ``[[trust]]`` tables::

    [[trust]]
    name = "alice"
    key = "UB…"        # public nkey of the controller's signing key
    role = "admin"     # viewer, operator or admin

It is reloaded when it changes (checked every few seconds) or on SIGHUP. A
file that fails to load on reload leaves the previous trust in force: a typo
never opens the host, and never locks every key out silently either.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shoal.protocol import Role
from shoal.protocol.envelope import summarize_validation_error
from shoal.protocol.errors import ShoalError
from shoal.protocol.signing import validate_public_key

log = logging.getLogger("shoal.agent")


class TrustError(ShoalError):
    """The trust file cannot be read or is invalid."""


class TrustEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    key: str
    role: Role

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        return validate_public_key(value)


class TrustDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trust: list[TrustEntry] = Field(default_factory=list)


def parse_trust(text: str, source: str = "trust file") -> dict[str, TrustEntry]:
    """Parse trust TOML into entries keyed by public key."""
    try:
        document = TrustDocument.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise TrustError(f"{source}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise TrustError(f"{source}: {summarize_validation_error(exc)}") from exc
    entries: dict[str, TrustEntry] = {}
    for entry in document.trust:
        if entry.key in entries:
            raise TrustError(f"{source}: key of {entry.name!r} is listed twice")
        entries[entry.key] = entry
    return entries


def render_trust(entries: list[TrustEntry]) -> str:
    """TOML text for a trust file."""
    blocks = [
        f'[[trust]]\nname = "{e.name}"\nkey = "{e.key}"\nrole = "{e.role}"\n' for e in entries
    ]
    return "\n".join(blocks)


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
