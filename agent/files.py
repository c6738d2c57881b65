"""Secret and config files on this host, and the key their values are sealed to.

Layout under the files directory (``<state>/files`` unless ``--files-dir``; an agent in a
container needs it bind-mounted at the same path on the host, because the engine mounts
these files into service containers by their host path)::

    box.key                         this host's X25519 private key (0600)
    secrets/NAME                    secrets stored by ``shoal secret set`` (0600)
    services/SERVICE/rREV/KEY       the files one revision mounts (mode and owner as asked)

Every directory is 0700: only root (and the agent's user) can reach a file in it, whatever
the mode a container asks for its own view of the file. A revision's files are kept while
the revision can be rolled back to, and removed with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from shoal.protocol import BadRequest, NotFound, ShoalError
from shoal.protocol.sealing import (
    SealingError,
    new_private_key,
    public_key,
    sealing_available,
    unseal,
    value_digest,
)
from shoal.protocol.service import FILE_NAME_PATTERN, FileMount

log = logging.getLogger("shoal.agent")

MAX_SECRET = 256 * 1024


class FilesUnavailable(ShoalError):
    """This agent cannot keep secret files (no files directory, or no PyNaCl)."""


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def _write(path: Path, data: bytes, mode: int, uid: int | None, gid: int | None) -> None:
    """Write a file atomically with ``mode`` and owner (never readable before it is set)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if uid is not None or gid is not None:
            try:
                os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
            except PermissionError as exc:
                raise BadRequest(
                    f"cannot give {path.name} owner {uid}:{gid}: the agent is not root"
                ) from exc
        tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class FileStore:
    """The files directory of one agent (nothing on disk without one)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._private: bytes | None = None

    # -- the box key

    def load_key(self) -> str | None:
        """Load (or create) this host's box key; its public half, or None without one."""
        if self.root is None or not sealing_available():
            return None
        path = _private_dir(self.root) / "box.key"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raw = new_private_key()
            _write(path, raw, 0o600, None, None)
            log.info("created this host's box key %s", path)
        if len(raw) != 32:
            raise FilesUnavailable(f"{path} is not a box key (32 bytes); remove it to make one")
        self._private = raw
        return public_key(raw)

    def _key(self) -> bytes:
        if self._private is None:
            raise FilesUnavailable(
                "this agent has no box key (it needs a files directory and PyNaCl), so it"
                " cannot receive secrets"
            )
        return self._private

    # -- stored secrets (shoal secret set)

    def _secrets_dir(self) -> Path:
        if self.root is None:
            raise FilesUnavailable("this agent has no files directory")
        return _private_dir(self.root / "secrets")

    def set_secret(self, name: str, sealed: str) -> bool:
        """Store a secret sent sealed to this host; True if it changed."""
        _check_name(name)
        value = self.open(sealed)
        path = self._secrets_dir() / name
        try:
            changed = path.read_bytes() != value
        except FileNotFoundError:
            changed = True
        if changed:
            _write(path, value, 0o600, None, None)
        return changed

    def remove_secret(self, name: str) -> bool:
        _check_name(name)
        try:
            (self._secrets_dir() / name).unlink()
        except FileNotFoundError:
            return False
        return True

    def secret_names(self) -> list[str]:
        if self.root is None or not (self.root / "secrets").is_dir():
            return []
        return sorted(
            p.name for p in (self.root / "secrets").iterdir() if not p.name.startswith(".")
        )

    def stored_secret(self, name: str) -> bytes:
        _check_name(name)
        try:
            return (self._secrets_dir() / name).read_bytes()
        except FileNotFoundError:
            raise NotFound(
                f"external secret {name!r} is not stored on this host"
                f" (shoal secret set {name} --from-file FILE -H HOST)"
            ) from None

    def open(self, sealed: str) -> bytes:
        try:
            value = unseal(sealed, self._key())
        except SealingError as exc:
            raise BadRequest(exc.message) from exc
        if len(value) > MAX_SECRET:
            raise BadRequest(f"a secret value is {len(value)} bytes; at most {MAX_SECRET}")
        return value

    # -- a revision's files

    def _revision_dir(self, service: str, revision: int) -> Path:
        if self.root is None:
            raise FilesUnavailable("this agent has no files directory for secrets and configs")
        return self.root / "services" / service / f"r{revision}"

    def materialize(
        self,
        service: str,
        revision: int,
        mounts: Sequence[FileMount],
        sealed: Mapping[str, str],
    ) -> dict[str, str]:
        """Write a revision's files; container target -> host path.

        A value comes sealed in the request, or from the stored secrets (external); each
        must match the spec's digest, so the spec hash stands for the values it runs.
        """
        if not mounts:
            return {}
        directory = _private_dir(self._revision_dir(service, revision))
        out: dict[str, str] = {}
        for mount in mounts:
            if mount.external:
                value = self.stored_secret(mount.name)
            else:
                box = sealed.get(mount.key)
                if box is None:
                    raise BadRequest(f"the request carries no value for {mount.key}")
                value = self.open(box)
                if value_digest(mount.kind, mount.name, value) != mount.digest:
                    raise BadRequest(f"the value of {mount.key} does not match the spec's digest")
            path = directory / f"{mount.kind}-{mount.name}-{_slug(mount.target)}"
            _write(
                path,
                value,
                mount.mode,
                None if mount.uid is None else int(mount.uid),
                None if mount.gid is None else int(mount.gid),
            )
            out[mount.target] = str(path)
        return out

    def existing(self, service: str, revision: int, mounts: Sequence[FileMount]) -> dict[str, str]:
        """The files a kept revision mounts (for a rollback); NotFound if one is gone."""
        if not mounts:
            return {}
        directory = self._revision_dir(service, revision)
        out: dict[str, str] = {}
        for mount in mounts:
            path = directory / f"{mount.kind}-{mount.name}-{_slug(mount.target)}"
            if not path.is_file():
                raise NotFound(f"the files of revision {revision} of {service} are gone")
            out[mount.target] = str(path)
        return out

    def keep_only(self, service: str, revisions: set[int]) -> None:
        """Remove the files of every revision of ``service`` not in ``revisions``."""
        if self.root is None:
            return
        base = self.root / "services" / service
        if not base.is_dir():
            return
        for child in base.iterdir():
            match = re.fullmatch(r"r(\d+)", child.name)
            if match and int(match[1]) not in revisions:
                shutil.rmtree(child, ignore_errors=True)
        if not any(base.iterdir()):
            with contextlib.suppress(OSError):
                base.rmdir()


def _slug(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", target.strip("/")) or "root"


def _check_name(name: str) -> None:
    if not re.fullmatch(FILE_NAME_PATTERN, name):
        raise BadRequest(f"invalid secret name {name[:60]!r}")


__all__ = ["FileStore", "FilesUnavailable"]
