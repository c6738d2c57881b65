"""NATS nkeys (ed25519 keys in NATS's text form) on whichever ed25519 library is installed.

An nkey is base32 (no padding) of a prefix byte, the 32-byte key and a CRC-16
(XMODEM, little-endian). A seed carries two prefix bytes: the seed marker and the
key type. Shoal's signing keys are user nkeys: seeds ``SU…``, public keys ``U…``.

The ed25519 arithmetic comes from PyNaCl where it is installed (it is, wherever it
has a wheel: amd64, arm64), or else from the pure-Python ``ecdsa`` package, which
installs everywhere without a compiler (armv7 and armv6 boards, where PyNaCl has no
wheel). Both give the same keys and the same signatures; PyNaCl is much faster at
verifying (docs/benchmarks.md has the figures).

nats-py imports the ``nkeys`` package for nkey and credentials authentication.
Where that package is not installed (it needs PyNaCl), :func:`provide_nkeys_module`
puts a small stand-in under its name that does the same three things nats-py asks
of it: read a seed, give its public key, sign the server's nonce.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import os
import sys
import types
from typing import Protocol

from .errors import ShoalError

PREFIX_BYTE_SEED = 18 << 3
PREFIX_BYTE_USER = 20 << 3
PREFIX_BYTE_ACCOUNT = 0
PREFIX_BYTE_OPERATOR = 14 << 3
PREFIX_BYTE_SERVER = 13 << 3
PREFIX_BYTE_CLUSTER = 2 << 3
_PUBLIC_PREFIXES = {
    PREFIX_BYTE_USER,
    PREFIX_BYTE_ACCOUNT,
    PREFIX_BYTE_OPERATOR,
    PREFIX_BYTE_SERVER,
    PREFIX_BYTE_CLUSTER,
}


class NkeyError(ShoalError, ValueError):
    """A seed, public key or signature is malformed."""


def crc16(data: bytes) -> int:
    """The CRC-16 nkeys append: CCITT polynomial, initial value 0 (XMODEM)."""
    return binascii.crc_hqx(data, 0)


def _b32encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=")


def _b32decode(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise NkeyError("not base32") from exc


def _with_checksum(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def _checked(raw: bytes) -> bytes:
    if len(raw) < 3:
        raise NkeyError("too short")
    body, checksum = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc16(body) != checksum:
        raise NkeyError("checksum mismatch")
    return body


def encode_seed(raw_seed: bytes, prefix: int = PREFIX_BYTE_USER) -> str:
    """The text form of a 32-byte ed25519 seed for a key of type ``prefix``."""
    if len(raw_seed) != 32:
        raise NkeyError("an ed25519 seed is 32 bytes")
    if prefix not in _PUBLIC_PREFIXES:
        raise NkeyError(f"unknown key type prefix {prefix}")
    head = bytes([PREFIX_BYTE_SEED | (prefix >> 5), (prefix & 31) << 3])
    return _b32encode(_with_checksum(head + raw_seed))


def decode_seed(seed: str | bytes) -> tuple[int, bytes]:
    """``(key type prefix, raw 32-byte seed)`` of a seed in text form, checksum verified."""
    text = seed.decode() if isinstance(seed, bytes | bytearray) else seed
    body = _checked(_b32decode(text.strip()))
    if len(body) != 34 or body[0] & 0b11111000 != PREFIX_BYTE_SEED:
        raise NkeyError("not an nkey seed")
    prefix = ((body[0] & 0b111) << 5) | ((body[1] & 0b11111000) >> 3)
    if prefix not in _PUBLIC_PREFIXES:
        raise NkeyError("unknown key type in seed")
    return prefix, body[2:]


def encode_public_key(raw_key: bytes, prefix: int = PREFIX_BYTE_USER) -> str:
    if len(raw_key) != 32:
        raise NkeyError("an ed25519 public key is 32 bytes")
    return _b32encode(_with_checksum(bytes([prefix]) + raw_key))


def decode_public_key(public_key: str, prefix: int = PREFIX_BYTE_USER) -> bytes:
    """The raw 32-byte key of a public nkey of type ``prefix``, checksum verified."""
    body = _checked(_b32decode(public_key))
    if len(body) != 33 or body[0] != prefix:
        raise NkeyError("not a public key of this type")
    return body[1:]


# --- ed25519 backends ------------------------------------------------------------------


class VerifyKey(Protocol):
    def verify(self, signature: bytes, message: bytes) -> bool: ...


class SigningKey(Protocol):
    def public_key(self) -> bytes: ...
    def sign(self, message: bytes) -> bytes: ...


class Ed25519(Protocol):
    name: str

    def signing_key(self, raw_seed: bytes) -> SigningKey: ...
    def verify_key(self, raw_key: bytes) -> VerifyKey: ...


class _NaclVerifyKey:
    def __init__(self, raw_key: bytes) -> None:
        import nacl.signing

        self._key = nacl.signing.VerifyKey(raw_key)

    def verify(self, signature: bytes, message: bytes) -> bool:
        import nacl.exceptions

        try:
            self._key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True


class _NaclSigningKey:
    def __init__(self, raw_seed: bytes) -> None:
        import nacl.signing

        self._key = nacl.signing.SigningKey(raw_seed)

    def public_key(self) -> bytes:
        return bytes(self._key.verify_key.encode())

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)


class NaclEd25519:
    """PyNaCl (libsodium): fast; installed wherever PyNaCl has a wheel."""

    name = "pynacl"

    def signing_key(self, raw_seed: bytes) -> SigningKey:
        return _NaclSigningKey(raw_seed)

    def verify_key(self, raw_key: bytes) -> VerifyKey:
        return _NaclVerifyKey(raw_key)


class _PureVerifyKey:
    def __init__(self, raw_key: bytes) -> None:
        import ecdsa

        try:
            self._key = ecdsa.VerifyingKey.from_string(raw_key, curve=ecdsa.Ed25519)
        except Exception as exc:  # ecdsa raises several types for a bad point
            raise NkeyError("not an ed25519 public key") from exc

    def verify(self, signature: bytes, message: bytes) -> bool:
        import ecdsa

        try:
            return bool(self._key.verify(signature, message))
        except (ecdsa.BadSignatureError, ValueError, AssertionError):
            return False


class _PureSigningKey:
    def __init__(self, raw_seed: bytes) -> None:
        import ecdsa

        self._key = ecdsa.SigningKey.from_string(raw_seed, curve=ecdsa.Ed25519)

    def public_key(self) -> bytes:
        return bytes(self._key.get_verifying_key().to_string())

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message))


class PureEd25519:
    """python-ecdsa: pure Python, installs anywhere; slower (see docs/benchmarks.md)."""

    name = "ecdsa"

    def signing_key(self, raw_seed: bytes) -> SigningKey:
        return _PureSigningKey(raw_seed)

    def verify_key(self, raw_key: bytes) -> VerifyKey:
        return _PureVerifyKey(raw_key)


def _choose_backend() -> Ed25519:
    forced = os.environ.get("SHOAL_ED25519", "").strip().lower()
    if forced == "ecdsa":
        return PureEd25519()
    if forced == "pynacl" or importlib.util.find_spec("nacl") is not None:
        return NaclEd25519()
    if importlib.util.find_spec("ecdsa") is not None:
        return PureEd25519()
    raise ImportError(
        "Shoal needs an ed25519 library: PyNaCl (pip install pynacl) or, "
        "where PyNaCl has no wheel, ecdsa (pip install ecdsa)"
    )


backend: Ed25519 = _choose_backend()


class KeyPair:
    """An nkey seed with its public key; signs with the chosen ed25519 backend."""

    def __init__(self, seed: str | bytes | bytearray) -> None:
        prefix, raw = decode_seed(bytes(seed) if isinstance(seed, bytearray) else seed)
        self.prefix = prefix
        self._signing = backend.signing_key(raw)  # built once: signing is per host
        self._seed_text = encode_seed(raw, prefix)
        self.public_key_text = encode_public_key(self._signing.public_key(), prefix)

    @classmethod
    def generate(cls, prefix: int = PREFIX_BYTE_USER) -> KeyPair:
        return cls(encode_seed(os.urandom(32), prefix))

    @property
    def seed_text(self) -> str:
        return self._seed_text

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)


# --- a stand-in for the nkeys package, for nats-py ---------------------------------------


class _NkeysKeyPair:
    """The part of ``nkeys.KeyPair`` that nats-py uses."""

    def __init__(self, pair: KeyPair) -> None:
        self._pair: KeyPair | None = pair

    @property
    def public_key(self) -> bytes:
        assert self._pair is not None, "wiped"
        return self._pair.public_key_text.encode()

    @property
    def seed(self) -> bytes:
        assert self._pair is not None, "wiped"
        return self._pair.seed_text.encode()

    def sign(self, data: bytes) -> bytes:
        assert self._pair is not None, "wiped"
        return self._pair.sign(bytes(data))

    def wipe(self) -> None:
        self._pair = None


def _nkeys_from_seed(seed: bytes | bytearray | str) -> _NkeysKeyPair:
    return _NkeysKeyPair(KeyPair(seed))


def nkeys_standin() -> types.ModuleType:
    """A module with the part of the nkeys package's API that nats-py uses."""
    module = types.ModuleType("nkeys", "Shoal's stand-in for nkeys (see protocol.nkey).")
    module.from_seed = _nkeys_from_seed  # type: ignore[attr-defined]
    module.KeyPair = _NkeysKeyPair  # type: ignore[attr-defined]
    module.ErrInvalidSeed = NkeyError  # type: ignore[attr-defined]
    return module


def provide_nkeys_module() -> bool:
    """Put the stand-in in place of ``nkeys`` where needed; True if it was put there.

    It is needed where the nkeys package is missing, and also when the pure-Python
    backend was chosen with ``SHOAL_ED25519=ecdsa`` (which is how the tests run the
    path 32-bit ARM boards take, on any machine).
    """
    existing = sys.modules.get("nkeys")
    if existing is not None and existing.__doc__ == nkeys_standin().__doc__:
        return False
    if backend.name != PureEd25519.name and (
        existing is not None or importlib.util.find_spec("nkeys") is not None
    ):
        return False
    sys.modules["nkeys"] = nkeys_standin()
    return True
