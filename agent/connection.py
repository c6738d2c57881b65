"""The agent's one NATS connection: connect, subscribe, publish, and the duplicate check.

The only module of the agent (Docker calls apart) that imports ``nats``; NATS errors are
caught and translated here, so the rest of the agent deals in bytes and ShoalErrors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from shoal.protocol import AgentFacts, NatsOptions, Reply, Request, Subjects, Target, Verb, nkey
from shoal.protocol.connection import describe_tls_error, is_auth_error

from .config import AgentSettings
from .errors import AgentStartError, AgentStopped

log = logging.getLogger("shoal.agent")

DUPLICATE_CHECK_TIMEOUT = 2.0


def connect_kwargs(options: NatsOptions) -> dict[str, Any]:
    """``nats.connect`` arguments: TLS files loaded (refused at start), nkeys stand-in set."""
    if options.needs_nkeys:
        nkey.provide_nkeys_module()  # where PyNaCl has no wheel (armv7)
    files = options.tls_files
    tls = None
    if files is not None:
        ca, cert, key = files
        try:
            tls = ssl.create_default_context(cafile=None if ca is None else str(ca))
            if cert is not None and key is not None:
                tls.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            raise AgentStartError(
                f"cannot load the TLS files (NATS_CA, NATS_CERT, NATS_KEY): {exc}"
            ) from exc
    return options.nats_kwargs(tls)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message that arrived on a subscription."""

    subject: str
    data: bytes
    reply: str | None


async def flush_in_order(nc: NATS, timeout: float = 10.0) -> None:
    """Return once the server has processed everything sent on ``nc`` so far.

    ``Client.flush()`` alone can see its PONG before queued SUBs reach the server; the
    second PING follows everything queued before this call.
    """
    await nc.flush(timeout=int(max(1.0, timeout)))
    await nc.flush(timeout=int(max(1.0, timeout)))


class AgentConnection:
    """Connects with retries until connected, refused or stopped; then publishes and subscribes."""

    def __init__(
        self,
        settings: AgentSettings,
        subjects: Subjects,
        *,
        on_disconnected: Callable[[], None],
        on_reconnected: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._subjects = subjects
        self._on_disconnected_hook = on_disconnected
        self._on_reconnected_hook = on_reconnected
        self._nc: NATS | None = None
        self._subs: list[Subscription] = []
        self._refused = asyncio.Event()
        self._fatal_error = ""
        self._failures = 0

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def is_open(self) -> bool:
        """Connected or reconnecting: publishing still makes sense."""
        return self._nc is not None and not self._nc.is_closed

    @property
    def url(self) -> str:
        """Where the connection is, for logs."""
        nc = self._nc
        return nc.connected_url.netloc if nc is not None and nc.connected_url else "?"

    @property
    def max_payload(self) -> int:
        """Largest message the server takes (its default until connected)."""
        return self._nc.max_payload if self._nc is not None else 1024 * 1024

    async def connect(self, host_id: str, stop: asyncio.Event) -> None:
        """Connect, retrying forever, until connected, refused, or ``stop`` is set."""
        options = self._settings.nats_options(host_id)
        self._refused.clear()
        connecting = asyncio.create_task(
            nats.connect(
                **connect_kwargs(options),
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1.0,
                connect_timeout=3,
                inbox_prefix=self._subjects.agent_inbox_prefix(host_id),
                ping_interval=2,
                max_outstanding_pings=2,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            ),
            name="nats-connect",
        )
        stopping = asyncio.create_task(stop.wait())
        refused = asyncio.create_task(self._refused.wait())
        await asyncio.wait({connecting, stopping, refused}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopping, refused):
            task.cancel()
        if connecting.done() and not connecting.cancelled():
            self._failures = 0
            self._nc = connecting.result()
            return
        connecting.cancel()
        await asyncio.gather(connecting, stopping, refused, return_exceptions=True)
        if self._refused.is_set():
            raise AgentStartError(f"NATS at {', '.join(options.servers)} {self._fatal_error}")
        raise AgentStopped("stopped before NATS was reachable")

    async def _on_error(self, exc: Exception) -> None:
        if self._nc is None and (is_auth_error(exc) or isinstance(exc, ssl.SSLError)):
            # Permanent until the configuration changes: stop instead of retrying forever.
            if isinstance(exc, ssl.SSLError):
                self._fatal_error = f"failed TLS: {describe_tls_error(exc)} (check --tlsca)"
            else:
                self._fatal_error = "refused this agent's credentials"
            self._refused.set()
            return
        self._failures += 1
        if self.is_connected or self._failures in (1, 10) or self._failures % 60 == 0:
            servers = ", ".join(self._settings.servers)
            log.warning("NATS (%s): %s", servers, exc or type(exc).__name__)

    async def _on_disconnected(self) -> None:
        self._on_disconnected_hook()

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS at %s", self.url)
        self._on_reconnected_hook()

    async def refuse_duplicate(self, host_id: str, instance: str) -> None:
        """Raise AgentStartError (and close) if a live agent already answers for ``host_id``."""
        assert self._nc is not None
        probe = Request(
            verb=Verb.PING, target=Target(host=host_id), sender=f"agent:{instance}", ttl=10
        )
        try:
            msg = await self._nc.request(
                self._subjects.host(host_id, Verb.PING),
                probe.model_dump_json().encode(),
                timeout=DUPLICATE_CHECK_TIMEOUT,
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return
        other = "another agent"
        try:
            reply = Reply.model_validate_json(msg.data)
            if reply.ok and reply.result:
                facts = AgentFacts.model_validate(reply.result)
                other = (
                    f"agent instance {facts.instance} on {facts.hostname or '?'} "
                    f"(started {facts.started_at.isoformat(timespec='seconds')})"
                )
        except ValidationError:
            pass
        await self._nc.close()
        raise AgentStartError(
            f"host id {host_id!r} is already served by {other}; "
            "stop it first or give this agent another --host-id"
        )

    async def subscribe(self, subject: str, handle: Callable[[Incoming], Awaitable[None]]) -> None:
        """Pass every message on ``subject`` to ``handle`` (which must not block)."""
        assert self._nc is not None

        async def on_message(msg: Msg) -> None:
            await handle(Incoming(msg.subject, msg.data, msg.reply or None))

        self._subs.append(
            await self._nc.subscribe(
                subject,
                cb=on_message,
                pending_msgs_limit=100_000,
                pending_bytes_limit=256 * 1024 * 1024,
            )
        )

    async def unsubscribe_all(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as exc:
                log.debug("unsubscribe failed: %s", exc)
        self._subs.clear()

    async def flush_in_order(self) -> None:
        """Return once the server has the subscriptions made so far (ready means reachable)."""
        assert self._nc is not None
        await flush_in_order(self._nc)

    async def publish(
        self,
        subject: str,
        data: bytes,
        *,
        what: str,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Publish if the connection is open; False (and a warning naming ``what``) if it failed."""
        if self._nc is None or self._nc.is_closed:
            return False
        try:
            await self._nc.publish(subject, data, headers=headers)
        except (nats.errors.Error, OSError) as exc:
            log.warning("could not publish %s: %s", what, exc or type(exc).__name__)
            return False
        return True

    async def flush(self, timeout: float) -> bool:
        """Wait until the server has what was published; False if it did not say so in time."""
        if not self.is_connected:
            return False
        assert self._nc is not None
        try:
            await self._nc.flush(timeout=int(max(1.0, timeout)))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("could not flush to NATS: %s", exc or type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        """Close the connection (bounded); safe to call twice and with NATS down."""
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        try:
            async with asyncio.timeout(5):
                await nc.close()
        except (nats.errors.Error, OSError, RuntimeError, TimeoutError) as exc:
            # NATS may be down while we stop: pending data is lost, the exit stays clean.
            log.warning("closing the NATS connection: %s", exc or type(exc).__name__)
