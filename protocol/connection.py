"""How to reach NATS: servers and every auth method nats-py offers.

Pure data, spelled the way ``nats`` CLI users expect. :meth:`NatsOptions.nats_kwargs`
turns it into ``nats.connect`` keyword arguments without touching a file; the
TLS context, which reads certificate files, is the caller's to build and pass in.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def split_servers(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Split ``nats://a:4222,nats://b:4222`` (as the nats CLI takes it) into URLs."""
    if value is None:
        return (DEFAULT_NATS_URL,)
    items = value.split(",") if isinstance(value, str) else list(value)
    urls = tuple(u.strip() for item in items for u in item.split(",") if u.strip())
    return urls or (DEFAULT_NATS_URL,)


class NatsOptions(BaseModel):
    """Connection settings for NATS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    servers: tuple[str, ...] = (DEFAULT_NATS_URL,)
    creds: Path | None = Field(default=None, description="NATS credentials file (JWT + seed).")
    nkey: Path | None = Field(default=None, description="NKey seed file.")
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tlsca: Path | None = None
    tlscert: Path | None = None
    tlskey: Path | None = None
    name: str = "shoal"

    @field_validator("servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> tuple[str, ...]:
        return split_servers(value)

    @field_validator("servers")
    @classmethod
    def _check_scheme(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if "://" in url and url.split("://", 1)[0] not in ("nats", "tls", "ws", "wss"):
                raise ValueError(f"unsupported NATS URL scheme in {url!r}")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> NatsOptions:
        if (self.tlscert is None) != (self.tlskey is None):
            raise ValueError("--tlscert and --tlskey go together")
        if self.password is not None and self.user is None:
            raise ValueError("a password needs a user")
        return self

    def nats_kwargs(self, tls: ssl.SSLContext | None = None) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (without callbacks or timings); no I/O.

        nats-py reads the creds and nkey files itself; ``tls`` is the context the
        caller built from :attr:`tls_files`.
        """
        kwargs: dict[str, Any] = {"servers": list(self.servers), "name": self.name}
        if self.creds is not None:
            kwargs["user_credentials"] = str(self.creds)
        if self.nkey is not None:
            kwargs["nkeys_seed"] = str(self.nkey)
        if self.user is not None:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        if self.token is not None:
            kwargs["token"] = self.token
        if tls is not None:
            kwargs["tls"] = tls
        return kwargs

    @property
    def needs_nkeys(self) -> bool:
        """Whether nats-py will sign the server's nonce (with creds or an nkey seed).

        It does so with the nkeys package, which needs PyNaCl; where that has no wheel
        (armv7), :func:`shoal.protocol.nkey.provide_nkeys_module` puts a stand-in in place.
        """
        return self.creds is not None or self.nkey is not None

    @property
    def tls_files(self) -> tuple[Path | None, Path | None, Path | None] | None:
        """(CA, certificate, key) files to build a TLS context from; None without TLS."""
        if self.tlsca is None and self.tlscert is None:
            return None
        return self.tlsca, self.tlscert, self.tlskey


def is_auth_error(exc: BaseException) -> bool:
    """True if a NATS client error means the server refused the credentials.

    nats-py raises ``AuthorizationError`` once connected, but during connect it
    passes the server's ``-ERR 'Authorization Violation'`` as a plain error, so
    both are recognised here, in one place.
    """
    text = str(exc).lower()
    return type(exc).__name__ == "AuthorizationError" or "authorization violation" in text


def describe_tls_error(exc: ssl.SSLError) -> str:
    """A short human account of a TLS failure."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    return str(exc.reason or exc).lower().replace("_", " ")
