"""The controller's signing keys: nkeys user seeds under the user's config directory.

``~/.config/shoal/keys/NAME.nk`` (mode 0600) holds a seed; ``keys/default``
names the default key, which is the first one created unless set otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from shoal.protocol import Signer

from .errors import FleetError

log = logging.getLogger("shoal.controller")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SUFFIX = ".nk"


class SigningKeyError(FleetError):
    """A signing key cannot be created or loaded."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shoal"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    public_key: str
    path: Path
    default: bool


def load_signer(path: Path, name: str | None = None) -> Signer:
    """Read a seed file; refuse one that others may read."""
    try:
        mode = path.stat().st_mode
        seed = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"signing key {path} is readable by others; chmod 600 it")
    try:
        return Signer(seed, name=name or path.stem)
    except ValueError as exc:
        raise SigningKeyError(
            f"{path} does not hold a valid signing key (an nkeys user seed)"
        ) from exc


class KeyStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or config_dir() / "keys"

    def _path(self, name: str) -> Path:
        if not _NAME_RE.fullmatch(name):
            raise SigningKeyError(f"invalid key name {name!r}: use letters, digits, '_', '-', '.'")
        return self.root / f"{name}{SUFFIX}"

    def create(self, name: str) -> KeyInfo:
        path = self._path(name)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        signer = Signer.generate(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SigningKeyError(f"a key named {name!r} already exists ({path})") from None
        with os.fdopen(fd, "wb") as f:
            f.write(signer.seed + b"\n")
        if self.default_name() is None:
            self.set_default(name)
        return KeyInfo(name, signer.public_key, path, self.default_name() == name)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob(f"*{SUFFIX}"))

    def list(self) -> list[KeyInfo]:
        default = self.default_name()
        return [
            KeyInfo(name, self.load(name).public_key, self._path(name), name == default)
            for name in self.names()
        ]

    def default_name(self) -> str | None:
        marker = self.root / "default"
        if marker.is_file():
            name = marker.read_text().strip()
            if name in self.names():
                return name
        names = self.names()
        if not names:
            return None
        # The first one created.
        return min(names, key=lambda n: (self._path(n).stat().st_mtime_ns, n))

    def set_default(self, name: str) -> None:
        if not self._path(name).is_file():
            raise SigningKeyError(f"no key named {name!r} in {self.root}")
        (self.root / "default").write_text(name + "\n")

    def load(self, name: str) -> Signer:
        path = self._path(name)
        if not path.is_file():
            raise SigningKeyError(f"no key named {name!r} in {self.root}")
        return load_signer(path, name)

    def default_signer(self) -> Signer | None:
        name = self.default_name()
        return self.load(name) if name is not None else None

    def ensure_default(self, name: str = "default") -> Signer:
        """The default key, created if there is none (``shoal up``)."""
        signer = self.default_signer()
        if signer is None:
            self.create(name)
            signer = self.load(name)
        return signer


def resolve_signer(key: Path | None, store: KeyStore | None = None) -> Signer | None:
    """``--key FILE``/``SHOAL_KEY`` if given, else the default key, else none (unsigned)."""
    if key is not None:
        return load_signer(key)
    return (store or KeyStore()).default_signer()
