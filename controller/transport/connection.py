"""The controller's NATS connection: connecting, publishing, subscribing, closing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription as NatsSubscription

from shoal.protocol import NatsOptions, nkey
from shoal.protocol.connection import describe_tls_error, is_auth_error

from ..errors import ConnectError, RegistryUnavailable

NatsClient = NATS
"""nats-py's client, for the tests and benchmarks that reach under the Connection."""


class Message(Protocol):
    """A message as subscribers see it (nats-py's ``Msg`` is one)."""

    @property
    def subject(self) -> str: ...
    @property
    def reply(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, str] | None: ...


Handler = Callable[[Message], Awaitable[None]]


async def flush_in_order(nc: NATS, timeout: float = 10.0) -> None:
    """Return once the server has processed everything sent on ``nc`` so far.

    nats-py's ``flush()`` writes its PING ahead of commands still queued for the
    flusher task; a second PING follows everything queued before this call.
    """
    await nc.flush(timeout=int(max(1.0, timeout)))
    await nc.flush(timeout=int(max(1.0, timeout)))


log = logging.getLogger("shoal.controller")


def connect_kwargs(options: NatsOptions) -> dict[str, Any]:
    """``nats.connect`` arguments: the TLS files loaded, the nkeys stand-in in place."""
    if options.needs_nkeys:
        nkey.provide_nkeys_module()
    files = options.tls_files
    if files is None:
        return options.nats_kwargs()
    ca, cert, key = files
    try:
        tls = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
        if cert is not None and key is not None:
            tls.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConnectError(
            f"cannot load the TLS files given by --tlsca, --tlscert and --tlskey: {exc}"
        ) from exc
    return options.nats_kwargs(tls)


async def connect(options: NatsOptions, *, connect_timeout: float = 3.0) -> Connection:
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
                **connect_kwargs(options),
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
        return Connection(nc)
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


def _lost(action: str, exc: Exception) -> ConnectError:
    if isinstance(
        exc,
        nats.errors.ConnectionClosedError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError,
    ):
        return ConnectError(f"{action}: lost the connection to NATS ({type(exc).__name__})")
    return ConnectError(f"{action}: NATS error: {exc}")


class Subscription:
    """A subscription; ``unsubscribe`` is safe on a connection that is gone."""

    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub

    async def messages(self) -> AsyncIterator[Message]:
        """The messages of a subscription made without a handler, until unsubscribed."""
        async for msg in self._sub.messages:
            yield msg

    async def unsubscribe(self) -> None:
        with contextlib.suppress(nats.errors.Error):  # the connection may be gone by now
            await self._sub.unsubscribe()


class Connection:
    """One NATS connection; its methods raise :class:`ConnectError`, never NATS errors."""

    def __init__(self, nc: NATS) -> None:
        self.raw = nc

    @property
    def is_connected(self) -> bool:
        return bool(self.raw.is_connected)

    @property
    def is_closed(self) -> bool:
        return bool(self.raw.is_closed)

    @property
    def server_version(self) -> tuple[int, int] | None:
        """(major, minor) of the server connected to, None when unknown."""
        version = self.raw.connected_server_version
        try:
            return int(version.major), int(version.minor)
        except (TypeError, ValueError, AttributeError):
            return None

    def new_inbox(self) -> str:
        return str(self.raw.new_inbox())

    async def publish(
        self, subject: str, data: bytes, *, reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        try:
            await self.raw.publish(subject, data, reply=reply, headers=headers)
        except nats.errors.Error as exc:
            raise _lost(f"publish on {subject}", exc) from exc

    async def subscribe(
        self,
        subject: str,
        cb: Handler | None = None,
        *,
        pending_msgs_limit: int = -1,
        pending_bytes_limit: int = -1,
    ) -> Subscription:
        """Subscribe with a handler, or without one to iterate ``messages``."""
        try:
            sub = await self.raw.subscribe(
                subject,
                cb=cb,
                pending_msgs_limit=pending_msgs_limit,
                pending_bytes_limit=pending_bytes_limit,
            )
        except nats.errors.Error as exc:
            raise _lost(f"subscribe to {subject}", exc) from exc
        return Subscription(sub)

    async def flush(self, timeout: float = 10.0) -> None:
        async with nats_errors("flush"):
            await self.raw.flush(timeout=int(max(1.0, timeout)))

    async def flush_in_order(self, timeout: float = 10.0) -> None:
        """See :func:`flush_in_order`."""
        async with nats_errors("flush"):
            await flush_in_order(self.raw, timeout)

    async def close(self) -> None:
        """Drain, or close when draining is impossible; safe on a lost connection."""
        nc = self.raw
        if nc.is_closed:
            return
        try:
            await nc.drain()
        except (nats.errors.Error, OSError, RuntimeError):
            try:
                await nc.close()  # not connected: nothing left to drain
            except asyncio.CancelledError:
                # Closing a connection that NATS cut off can end in the socket's close
                # waiter being cancelled inside nats-py (seen under a server restart).
                # The connection is closed all the same; a real cancellation of this
                # task goes on.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.debug("closing a lost NATS connection ended in a cancelled close")
