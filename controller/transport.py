"""The controller's NATS connection; the one place NATS errors are translated."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from shoal.protocol import NatsOptions
from shoal.protocol.connection import describe_tls_error, is_auth_error

from .errors import ConnectError, RegistryUnavailable


async def flush_in_order(nc: NATS, timeout: float = 10.0) -> None:
    """Return once the server has processed everything sent on ``nc`` so far.

    nats-py's ``flush()`` writes its PING ahead of commands still queued for the
    flusher task; a second PING follows everything queued before this call.
    """
    await nc.flush(timeout=int(max(1.0, timeout)))
    await nc.flush(timeout=int(max(1.0, timeout)))


log = logging.getLogger("shoal.controller")


async def connect(options: NatsOptions, *, connect_timeout: float = 3.0) -> NATS:
    """Connect with a few quick retries (an operator wants to know at once)."""
    errors: list[Exception] = []

    async def remember_error(exc: Exception) -> None:
        errors.append(exc)
        log.debug("NATS error: %s", exc)

    servers = ", ".join(options.servers)
    attempts = 3
    try:
        # nats-py can hang after a failed TLS handshake: bound the whole attempt.
        async with asyncio.timeout((connect_timeout + 1) * attempts * len(options.servers)):
            nc = await nats.connect(
                **options.connect_kwargs(),
                connect_timeout=connect_timeout,
                allow_reconnect=True,
                max_reconnect_attempts=attempts - 1,
                reconnect_time_wait=0.3,
                error_cb=remember_error,
                pending_size=64 * 1024 * 1024,
            )
        # Connected: from now on ride out a server restart (a minute of retries) instead
        # of giving up after the quick attempts that suit the first connect.
        nc.options["max_reconnect_attempts"] = RECONNECT_ATTEMPTS
        nc.options["reconnect_time_wait"] = 1.0
        return nc
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        causes = [*errors, exc]
        tls_failure = next((e for e in causes if isinstance(e, ssl.SSLError)), None)
        if tls_failure is not None:
            raise ConnectError(
                f"TLS with NATS at {servers} failed: {describe_tls_error(tls_failure)} "
                "(check --tlsca, --tlscert and --tlskey)"
            ) from exc
        if any(is_auth_error(e) for e in causes):
            raise ConnectError(
                f"NATS at {servers} refused the credentials (check --creds, --nkey, "
                "--user/--password or --token)"
            ) from exc
        detail = next((str(e) for e in reversed(causes) if str(e)), type(exc).__name__)
        raise ConnectError(
            f"cannot reach NATS at {servers} ({detail}); is the server running? "
            "(set --server or NATS_URL)"
        ) from exc


RECONNECT_ATTEMPTS = 60


@asynccontextmanager
async def nats_errors(action: str) -> AsyncIterator[None]:
    """Translate a NATS connection lost mid-operation into :class:`ConnectError`."""
    try:
        yield
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionReconnectingError,
        nats.errors.StaleConnectionError,
    ) as exc:
        raise ConnectError(f"{action}: lost the connection to NATS ({type(exc).__name__})") from exc
    except nats.errors.Error as exc:
        raise ConnectError(f"{action}: NATS error: {exc}") from exc


@asynccontextmanager
async def jetstream_errors(action: str) -> AsyncIterator[None]:
    """Translate JetStream errors into :class:`RegistryUnavailable`."""
    try:
        yield
    except nats.js.errors.NotFoundError:
        raise
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
        raise RegistryUnavailable(f"{action}: JetStream is not enabled on this NATS") from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise RegistryUnavailable(f"{action}: JetStream did not answer in time") from exc
    except nats.js.errors.APIError as exc:
        raise RegistryUnavailable(f"{action}: {exc.description or exc}") from exc
    except nats.errors.Error as exc:
        raise RegistryUnavailable(f"{action}: {exc}") from exc
