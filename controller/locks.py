"""Fleet-wide locks: one rollout per service at a time, in a JetStream key-value bucket.

A lock is a key (the service name) in the ``SHOAL_LOCKS`` bucket, created only if
absent. The holder rewrites it every ``refresh_every`` seconds; the bucket's TTL
removes the key of a controller that crashed, so a lock never outlives its holder
by more than the TTL. Without JetStream a rollout proceeds unlocked, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from datetime import datetime
from types import TracebackType

from shoal.protocol import Subjects, utcnow

from .errors import FleetError, KeyExists, RegistryUnavailable, WrongRevision
from .transport import Bucket, BucketSpec, JetStream

log = logging.getLogger("shoal.controller")

LOCK_TTL = 60.0
"""Seconds a lock survives without a refresh (the bucket's max age)."""
REFRESH_EVERY = 15.0
"""Seconds between refreshes of a held lock."""
LOCK_TIMEOUT = 3.0
"""Limit on each JetStream call the lock makes."""


def lock_bucket_name(subjects: Subjects) -> str:
    """``SHOAL_LOCKS`` for the default prefix, suffixed for others."""
    if subjects.prefix == "shoal":
        return "SHOAL_LOCKS"
    return "SHOAL_LOCKS_" + re.sub(r"[^A-Za-z0-9_-]", "_", subjects.prefix).upper()


class LockHeld(FleetError):
    """Another controller is rolling out this service."""

    def __init__(self, service: str, holder: str, since: datetime | None) -> None:
        when = f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since is not None else ""
        super().__init__(
            f"service {service!r} is locked by {holder}{when}: another rollout is in "
            f"progress (the lock of a controller that died expires within {LOCK_TTL:.0f}s)",
            detail={
                "service": service,
                "holder": holder,
                "since": since.isoformat() if since is not None else None,
            },
        )
        self.service = service
        self.holder = holder
        self.since = since


class LockLost(FleetError):
    """A held lock could not be refreshed and was taken over; the rollout stopped."""


class ServiceLock:
    """``async with ServiceLock(js, "web", holder="alice@ops")``: hold the fleet-wide lock.

    Raises :class:`LockHeld` on entry if another holder has it. While held, a
    background task refreshes it; on exit it is deleted. If JetStream is not
    available the block runs without a lock (``locked`` is False) and a warning
    is logged. If a refresh finds the lock taken over, ``lost`` becomes True.
    """

    def __init__(
        self,
        js: JetStream,
        service: str,
        *,
        holder: str,
        bucket: str = "SHOAL_LOCKS",
        ttl: float = LOCK_TTL,
        refresh_every: float = REFRESH_EVERY,
        timeout: float = LOCK_TIMEOUT,
    ) -> None:
        if not 0 < refresh_every < ttl:
            raise ValueError("refresh_every must be positive and shorter than the lock TTL")
        self.js = js
        self.service = service
        self.holder = holder
        self.bucket = bucket
        self.ttl = ttl
        self.refresh_every = refresh_every
        self.timeout = timeout
        self.locked = False
        self.lost = False
        self.since: datetime | None = None
        self._kv: Bucket | None = None
        self._revision = 0
        self._refresher: asyncio.Task[None] | None = None

    def _value(self) -> bytes:
        since = self.since.isoformat() if self.since is not None else None
        return json.dumps({"holder": self.holder, "since": since}).encode()

    async def __aenter__(self) -> ServiceLock:
        try:
            async with asyncio.timeout(self.timeout * 3):
                await self._acquire()
        except (RegistryUnavailable, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, RegistryUnavailable) else "timed out"
            log.warning(
                "no fleet-wide lock for service %s (%s): proceeding without one",
                self.service,
                reason,
            )
            return self
        self.locked = True
        self._refresher = asyncio.create_task(self._refresh(), name=f"lock-{self.service}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    async def _acquire(self) -> None:
        kv = await self.js.bucket(
            BucketSpec(
                name=self.bucket,
                description="Shoal rollout locks: one rollout per service at a time",
                ttl=self.ttl,
            ),
            action="service lock",
        )
        self.since = utcnow()
        try:
            self._revision = await kv.create(self.service, self._value())
        except KeyExists:
            holder, since = await self._current(kv)
            raise LockHeld(self.service, holder, since) from None
        self._kv = kv

    async def _current(self, kv: Bucket) -> tuple[str, datetime | None]:
        """Who holds the lock, and since when (best effort)."""
        try:
            document = json.loads(await kv.get(self.service) or b"{}")
            since = document.get("since")
            return str(document.get("holder") or "another controller"), (
                datetime.fromisoformat(since) if isinstance(since, str) else None
            )
        except (RegistryUnavailable, ValueError, AttributeError):
            return "another controller", None

    async def _refresh(self) -> None:
        kv = self._kv
        assert kv is not None
        while True:
            await asyncio.sleep(self.refresh_every)  # the refresh period, not synchronisation
            try:
                async with asyncio.timeout(self.timeout):
                    self._revision = await kv.update(
                        self.service, self._value(), last=self._revision
                    )
            except WrongRevision:
                self.lost = True
                log.error(
                    "lost the lock of service %s: it expired and was taken over", self.service
                )
                return
            except (RegistryUnavailable, TimeoutError) as exc:
                log.warning("could not refresh the lock of service %s: %s", self.service, exc)

    async def release(self) -> None:
        """Stop refreshing and delete the lock if still ours; safe to call twice."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        kv, self._kv = self._kv, None
        if kv is None or self.lost:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await kv.delete(self.service, last=self._revision)
        except (RegistryUnavailable, WrongRevision, TimeoutError) as exc:
            log.warning(
                "could not release the lock of service %s (%s); it expires within %.0fs",
                self.service,
                exc,
                self.ttl,
            )
