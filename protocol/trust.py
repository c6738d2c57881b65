"""The trust file's model: which public keys may send requests, and with which role.

A TOML file of ``[[trust]]`` tables::

    [[trust]]
    name = "alice"
    key = "UB…"        # public nkey of the controller's signing key
    role = "admin"     # viewer, operator or admin

Parsed from text and rendered to text here; agents read it from disk
(:mod:`shoal.agent.trust`) and ``shoal enroll`` and ``shoal up`` write it.
"""

from __future__ import annotations

import tomllib

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .envelope import summarize_validation_error
from .errors import ShoalError
from .signing import validate_public_key
from .verbs import Role


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
