"""Request signatures: ed25519 over a canonical JSON form of the request.

The signed bytes are the request's JSON object without its ``sig`` member,
serialised with keys sorted at every level, no insignificant whitespace and
UTF-8 without escaping non-ASCII; numbers are written as Python's ``json``
writes the parsed value (integers as integers, other numbers in their shortest
round-trip form, e.g. ``60.0``, ``1.5``). Both sides compute them from the JSON
object (not from a re-serialised model); docs/security.md has a test vector.

Keys are NATS nkeys: a user seed (``SU…``) signs, its public key (``U…``) is
what agents trust (``protocol.nkey`` reads and writes them).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import nkey
from .errors import ErrorCode, ShoalError

SIGNATURE_ALGORITHM = "ed25519-nkey"
_PUBLIC_USER_PREFIX = "U"


class Unauthorized(ShoalError):
    """The request is unsigned, or its signature is invalid or unknown."""

    code = ErrorCode.UNAUTHORIZED


class Forbidden(ShoalError):
    """The signer's role does not allow this request."""

    code = ErrorCode.FORBIDDEN


class InvalidKey(ShoalError, ValueError):
    """A key or seed is malformed."""

    code = ErrorCode.BAD_REQUEST


class Signature(BaseModel):
    """Who signed a request, and the signature over its canonical bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alg: str = Field(default=SIGNATURE_ALGORITHM, max_length=32)
    key: str = Field(max_length=64, description="The signer's public nkey (U…).")
    value: str = Field(max_length=128, description="The ed25519 signature, base64url.")


def canonical_bytes(document: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the request object without ``sig``, canonical JSON."""
    unsigned = {k: v for k, v in document.items() if k != "sig"}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def decode_public_key(public_key: str) -> bytes:
    """The raw 32-byte ed25519 key of a public user nkey, checksum verified."""
    if not isinstance(public_key, str) or not public_key.startswith(_PUBLIC_USER_PREFIX):
        raise InvalidKey(f"not a public user key (U…): {str(public_key)[:20]!r}")
    try:
        return nkey.decode_public_key(public_key, nkey.PREFIX_BYTE_USER)
    except nkey.NkeyError as exc:
        raise InvalidKey(f"malformed public key {public_key[:20]!r}: {exc}") from exc


@functools.lru_cache(maxsize=1024)
def _verify_key(public_key: str) -> nkey.VerifyKey:
    try:
        return nkey.backend.verify_key(decode_public_key(public_key))
    except nkey.NkeyError as exc:
        raise InvalidKey(f"malformed public key {public_key[:20]!r}: {exc}") from exc


def validate_public_key(public_key: str) -> str:
    decode_public_key(public_key)
    return public_key


class Signer:
    """Signs requests with a user seed."""

    def __init__(self, seed: bytes | str, *, name: str = "") -> None:
        text = seed.decode(errors="replace") if isinstance(seed, bytes | bytearray) else seed
        try:
            self._pair = nkey.KeyPair(text.strip())
        except nkey.NkeyError as exc:
            raise InvalidKey(f"malformed signing key seed: {exc}") from exc
        if self._pair.prefix != nkey.PREFIX_BYTE_USER:
            raise InvalidKey("the seed is not a user seed (SU…)")
        self.public_key = self._pair.public_key_text
        self.name = name

    @classmethod
    def generate(cls, name: str = "") -> Signer:
        return cls(nkey.KeyPair.generate(nkey.PREFIX_BYTE_USER).seed_text, name=name)

    @property
    def seed(self) -> bytes:
        return self._pair.seed_text.encode()

    def signature(self, canonical: bytes) -> dict[str, str]:
        """The ``sig`` member for a request whose canonical bytes are given."""
        return {"alg": SIGNATURE_ALGORITHM, "key": self.public_key, "value": self.sign(canonical)}

    def sign(self, canonical: bytes) -> str:
        """The signature ``value`` over ``canonical``: base64url, no padding."""
        return base64.urlsafe_b64encode(self._pair.sign(canonical)).rstrip(b"=").decode()

    def sign_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """Return ``document`` with a ``sig`` over its canonical bytes."""
        raw = self._pair.sign(canonical_bytes(document))
        value = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        signed = dict(document)
        signed["sig"] = Signature(key=self.public_key, value=value).model_dump()
        return signed


def verify_document(document: dict[str, Any]) -> str:
    """Check the ``sig`` of a raw request object; return the signer's public key.

    Raises :class:`Unauthorized` if there is no valid signature.
    """
    sig = document.get("sig")
    if sig is None:
        raise Unauthorized("the request is not signed; this agent only accepts signed requests")
    try:
        signature = Signature.model_validate(sig)
    except ValueError as exc:
        raise Unauthorized("malformed signature") from exc
    if signature.alg != SIGNATURE_ALGORITHM:
        raise Unauthorized(f"unsupported signature algorithm {signature.alg!r}")
    try:
        verify_key = _verify_key(signature.key)
        raw_sig = base64.urlsafe_b64decode(signature.value + "=" * (-len(signature.value) % 4))
    except (InvalidKey, binascii.Error, ValueError) as exc:
        raise Unauthorized("the signature does not verify") from exc
    if not verify_key.verify(raw_sig, canonical_bytes(document)):
        raise Unauthorized("the signature does not verify")
    return signature.key
