"""Secret and config values in transit: sealed boxes to a host's X25519 key.

A deploy carries a service's secret values sealed to each target host's ``box_key``
(libsodium sealed boxes through PyNaCl): only that host opens them, and nothing on
the way (NATS, the audit trail, a captured request) sees a value. The spec carries
only :func:`value_digest`, a slow salted hash, so that a changed value is a changed
spec without the value appearing anywhere.

PyNaCl has no wheel for 32-bit ARM; there an agent announces no box key, and a deploy
with secrets to it is refused naming the host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib.util
from types import ModuleType

from .errors import ErrorCode, ShoalError

BOX_KEY_BYTES = 32


class SealingError(ShoalError):
    """A sealed value cannot be made or opened (no key, a bad box, no PyNaCl)."""

    code = ErrorCode.BAD_REQUEST


def sealing_available() -> bool:
    """Whether PyNaCl (libsodium) is importable here."""
    return importlib.util.find_spec("nacl") is not None


def _public_module() -> ModuleType:
    try:
        import nacl.public
    except ImportError as exc:
        raise SealingError(
            "sealed secrets need PyNaCl, which is not installed here (pip install pynacl)"
        ) from exc
    return nacl.public


def new_private_key() -> bytes:
    """32 random bytes: an X25519 private key."""
    return bytes(_public_module().PrivateKey.generate())


def public_key(private: bytes) -> str:
    """The base64 public key (``box_key``) of a private key."""
    return base64.b64encode(bytes(_public_module().PrivateKey(private).public_key)).decode()


def check_box_key(box_key: str) -> bytes:
    """The raw bytes of a base64 ``box_key``, or SealingError."""
    try:
        raw = base64.b64decode(box_key, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealingError(f"invalid box key {box_key[:16]!r}: not base64") from exc
    if len(raw) != BOX_KEY_BYTES:
        raise SealingError(f"invalid box key: {len(raw)} bytes, not {BOX_KEY_BYTES}")
    return raw


def seal(value: bytes, box_key: str) -> str:
    """``value`` sealed to the holder of ``box_key``, as base64."""
    public = _public_module()
    box = public.SealedBox(public.PublicKey(check_box_key(box_key)))
    return base64.b64encode(box.encrypt(value)).decode()


def unseal(sealed: str, private: bytes) -> bytes:
    """Open a sealed value with this host's private key, or SealingError."""
    public = _public_module()
    import nacl.exceptions

    try:
        raw = base64.b64decode(sealed, validate=True)
        return bytes(public.SealedBox(public.PrivateKey(private)).decrypt(raw))
    except (binascii.Error, ValueError, nacl.exceptions.CryptoError) as exc:
        raise SealingError("a sealed value does not open with this host's key") from exc


def value_digest(kind: str, name: str, value: bytes) -> str:
    """A slow salted hash of a value (scrypt): stable, and costly to guess a value from."""
    salt = f"shoal/{kind}/{name}".encode()
    return "scrypt:" + hashlib.scrypt(value, salt=salt, n=2**14, r=8, p=1, dklen=16).hex()


__all__ = [
    "SealingError",
    "check_box_key",
    "new_private_key",
    "public_key",
    "seal",
    "sealing_available",
    "unseal",
    "value_digest",
]
