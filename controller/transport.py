"""The controller's NATS connection; the one place NATS errors are translated."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from controller.errors import ConnectError, RegistryUnavailable
from protocol import NatsOptions

log = logging.getLogger("shoal.controller")


async def _quiet_error_cb(exc: Exception) -> None:
    log.debug("NATS error: %s", exc)


async def connect(options: NatsOptions, *, connect_timeout: float = 3.0) -> NATS:
    """Connect once (no retry loop: an operator wants to know at once)."""
    try:
        return await nats.connect(
            **options.connect_kwargs(),
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=3,
            reconnect_time_wait=0.5,
            error_cb=_quiet_error_cb,
            pending_size=64 * 1024 * 1024,
        )
    except nats.errors.NoServersError as exc:
        raise ConnectError(
            f"cannot reach NATS at {', '.join(options.servers)}; is the server running? "
            "(set --server or NATS_URL)"
        ) from exc
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise ConnectError(
            f"cannot connect to NATS at {', '.join(options.servers)}: {exc or type(exc).__name__}"
        ) from exc


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
