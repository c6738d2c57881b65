"""The reconciler (``shoal serve``): every selected host converges to its declarations.

It watches the declarations (``SHOAL_DESIRED``) and the agents' heartbeats, which carry
each service's revision, spec hash and state. A host that is drifted (the service missing,
stopped, another spec, unhealthy beyond a grace period), new or back online is deployed
to, in waves under the declaration's rollout policy, with the same health gate and
per-host rollback as ``shoal deploy``. A failed host is retried with exponential back-off
per generation. Only the holder of a short JetStream lease acts; other replicas wait and
take over within seconds of its death. What was done per host is kept in
``SHOAL_CONVERGENCE``, so a new leader neither repeats a deploy in flight nor forgets a
back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError

from shoal.protocol import AgentFacts, Selector, utcnow

from .desired import (
    Declaration,
    DesiredStore,
    HostState,
    Record,
    evaluate,
    failed_record,
    matches,
    record_key,
)
from .errors import FleetError
from .fleet import Fleet
from .locks import LOCK_TTL, LockHeld, LockLost, ServiceLock, lock_bucket_name
from .registry import AgentRecord, is_online
from .rollout import DEPLOYED, HostFinished
from .transport import BucketSpec, JetStream, Message

log = logging.getLogger("shoal.reconciler")

LEASE_TTL = 6.0
"""Seconds the reconciler's lease outlives its holder (another replica takes over then)."""
LEASE_REFRESH = 1.5
TICK = 5.0
"""Seconds between full passes when nothing wakes the reconciler earlier."""
STANDBY_RETRY = 1.0
RECORDS_REREAD = 60.0
"""Seconds a leader trusts its own copy of the convergence records before reading them
all again. Only the lease holder writes them, and it keeps its copy up to date as it
does; the copy is read afresh whenever the lease is taken."""
RECONCILER_SENDER = "shoal-serve"
"""How a reconciler's requests and locks are signed off (``shoal-serve:NAME@HOST``)."""


@dataclass
class ReconcilerStats:
    passes: int = 0
    deploys: int = 0
    removals: int = 0
    leader_since: datetime | None = None
    events: list[str] = field(default_factory=list)


class Reconciler:
    """One replica of ``shoal serve``'s reconciler over a connected :class:`Fleet`."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        holder: str,
        tick: float = TICK,
        lease_ttl: float = LEASE_TTL,
        lease_refresh: float = LEASE_REFRESH,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.holder = holder
        self.tick_every = tick
        self.lease_ttl = lease_ttl
        self.lease_refresh = lease_refresh
        self.on_event = on_event
        self.store = DesiredStore(JetStream(fleet.nc, timeout=5.0), fleet.subjects)
        self.hosts: dict[str, AgentRecord] = {}
        self.unhealthy_since: dict[tuple[str, str], datetime] = {}
        self.working: dict[str, asyncio.Task[None]] = {}
        self.stats = ReconcilerStats()
        self.leader = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._records: dict[str, Record] | None = None
        self._records_read = 0.0

    def say(self, message: str) -> None:
        log.info("%s", message)
        self.stats.events.append(message)
        del self.stats.events[:-200]
        if self.on_event is not None:
            self.on_event(message)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # --- heartbeats --------------------------------------------------------------------

    async def _on_beat(self, msg: Message) -> None:
        try:
            facts = AgentFacts.model_validate_json(msg.data)
        except ValidationError:
            return
        now = utcnow()
        old = self.hosts.get(facts.host_id)
        online = facts.status == "online"
        self.hosts[facts.host_id] = AgentRecord(facts.host_id, facts, now, online)
        for beat in facts.services:
            key = (beat.name, facts.host_id)
            if beat.health == "unhealthy":
                self.unhealthy_since.setdefault(key, now)
            else:
                self.unhealthy_since.pop(key, None)
        if (
            old is None
            or not old.online
            or old.facts.instance != facts.instance
            or old.facts.services != facts.services
            or old.facts.labels != facts.labels
            or not online
        ):
            self._wake.set()

    def _current_hosts(self) -> list[AgentRecord]:
        """The hosts with their online state as of now (a silent host goes offline)."""
        out = []
        for record in self.hosts.values():
            online = record.online and is_online(
                record.facts, record.last_seen, self.fleet.offline_after
            )
            out.append(AgentRecord(record.host_id, record.facts, record.last_seen, online))
        return out

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until :meth:`stop`: wait for the lease, then reconcile while holding it."""
        subscription = await self.fleet.nc.subscribe(
            self.fleet.subjects.heartbeat_all(), self._on_beat
        )
        try:
            for record in await self.fleet.agents():
                self.hosts.setdefault(record.host_id, record)
            while not self._stop.is_set():
                lease = ServiceLock(
                    JetStream(self.fleet.nc, timeout=3.0),
                    "reconciler",
                    holder=self.holder,
                    bucket=lease_bucket(self.fleet),
                    ttl=self.lease_ttl,
                    refresh_every=self.lease_refresh,
                )
                try:
                    async with lease:
                        await self._lead(lease)
                except LockHeld:
                    if self.leader:
                        self.say("lost the lease")
                    self.leader = False
                    await self._sleep(STANDBY_RETRY)
        finally:
            await subscription.unsubscribe()
            await self._settle()

    async def _lead(self, lease: ServiceLock) -> None:
        if not lease.locked:
            raise FleetError("the reconciler needs JetStream (for its lease and the desired state)")
        self.leader = True
        self._records = None  # another leader wrote records since this one last read them
        self.stats.leader_since = utcnow()
        self.say(f"{self.holder} holds the reconciler lease")
        await self._break_stale_locks()
        while not self._stop.is_set() and not lease.lost:
            self._wake.clear()
            try:
                await self.reconcile()
            except FleetError as exc:
                log.warning("reconcile pass failed: %s", exc.message)
            await self._sleep(self.tick_every)
        self.leader = False
        if lease.lost:
            self.say("the reconciler lease was lost; standing by")
            await self._settle()

    async def _break_stale_locks(self) -> None:
        """Release the service locks of earlier leaders: only the lease holder rolls out,
        so a lock a reconciler holds without the lease is a dead replica's."""
        js = JetStream(self.fleet.nc, timeout=3.0)
        bucket = await js.bucket(
            BucketSpec(lock_bucket_name(self.fleet.subjects), "Shoal rollout locks", LOCK_TTL),
            action="service locks",
        )
        mine = self.fleet.sender
        for key, raw in (await bucket.entries()).items():
            try:
                holder = str(json.loads(raw).get("holder", ""))
            except (ValueError, AttributeError):
                continue
            who = holder.split(" (pid ", 1)[0]
            if who.startswith(RECONCILER_SENDER) and who != mine:
                await bucket.purge(key)
                self.say(f"released the lock of {key!r} held by {holder} (an earlier leader)")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _settle(self) -> None:
        """Let rollouts in flight end (each is bounded by its timeouts)."""
        tasks = [t for t in self.working.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # --- one pass ----------------------------------------------------------------------

    async def reconcile(self) -> None:
        """One pass: every declaration against every host it selects."""
        self.stats.passes += 1
        declarations = await self.store.declarations()
        records = await self._all_records()
        hosts = self._current_hosts()
        now = utcnow()
        for name, declaration in declarations.items():
            task = self.working.get(name)
            if task is not None and not task.done():
                continue
            if declaration.deleted:
                self._remove(declaration, hosts)
                continue
            due = []
            for agent in hosts:
                if not matches(declaration, agent):
                    continue
                record = records.get(record_key(name, agent.host_id))
                state = evaluate(
                    declaration,
                    agent,
                    record,
                    now,
                    self.unhealthy_since.get((name, agent.host_id)),
                )
                if state.state == HostState.DRIFTED:
                    due.append((agent.host_id, state.reason))
                elif (
                    state.state == HostState.FAILED
                    and record is not None
                    and (record.next_try is None or record.next_try <= now)
                ):
                    due.append((agent.host_id, f"retry {record.attempts + 1}"))
            if due:
                self.working[name] = asyncio.create_task(
                    self._deploy(declaration, due, records), name=f"converge-{name}"
                )

    # --- the convergence records, and this leader's copy of them ---------------------------

    async def _all_records(self) -> dict[str, Record]:
        now = time.monotonic()
        if self._records is None or now - self._records_read >= RECORDS_REREAD:
            self._records = await self.store.all_records()
            self._records_read = now
        return self._records

    async def _write(self, record: Record) -> None:
        if self._records is not None:
            self._records[record.key] = record
        await self.store.write(record)

    async def _purge(self, key: str) -> None:
        if self._records is not None:
            self._records.pop(key, None)
        with contextlib.suppress(FleetError):
            await (await self.store.records()).purge(key)

    async def _deploy(
        self, declaration: Declaration, due: list[tuple[str, str]], records: dict[str, Record]
    ) -> None:
        hosts = sorted(h for h, _ in due)
        reasons = ", ".join(f"{h} ({r})" for h, r in sorted(due))
        self.say(f"{declaration.name} generation {declaration.generation}: deploying to {reasons}")
        for host in hosts:
            await self._write(
                Record(
                    service=declaration.name,
                    host=host,
                    generation=declaration.generation,
                    state="deploying",
                    attempts=self._attempts(
                        records.get(record_key(declaration.name, host)), declaration
                    ),
                )
            )
        events = self.fleet.deploy(
            declaration.service,
            selector=Selector(hosts=tuple(hosts)),
            config=declaration.update,
            rollback_config=declaration.rollback,
            health_timeout=declaration.health_timeout,
            wait_for=declaration.wait_for,
        )
        finished: set[str] = set()
        try:
            async with aclosing(events) as stream:
                async for event in stream:
                    if isinstance(event, HostFinished) and event.host in hosts:
                        finished.add(event.host)
                        await self._finished(declaration, event, records)
        except (LockHeld, LockLost) as exc:
            self.say(f"{declaration.name}: {exc.message}; trying again at the next pass")
            wake = False
        except FleetError as exc:
            self.say(f"{declaration.name}: rollout failed: {exc.message}")
            wake = False
        else:
            wake = True
        finally:
            # Hosts the rollout never reached go back to drifted (tried again next pass).
            for host in set(hosts) - finished:
                await self._purge(record_key(declaration.name, host))
            self.stats.deploys += 1
        if wake:
            self._wake.set()

    @staticmethod
    def _attempts(record: Record | None, declaration: Declaration) -> int:
        if record is None or record.generation != declaration.generation:
            return 0
        return record.attempts

    async def _finished(
        self, declaration: Declaration, event: HostFinished, records: dict[str, Record]
    ) -> None:
        key = record_key(declaration.name, event.host)
        if event.outcome in DEPLOYED:
            record = Record(
                service=declaration.name,
                host=event.host,
                generation=declaration.generation,
                state="converged",
            )
            self.say(f"{declaration.name} on {event.host}: {event.outcome}")
        elif event.outcome == "missing":
            await self._purge(key)
            return
        else:
            reason = event.error.message if event.error is not None else event.outcome
            record = failed_record(records.get(key), declaration, event.host, reason)
            self.say(
                f"{declaration.name} on {event.host}: failed ({reason}); attempt"
                f" {record.attempts}, next try at {record.next_try:%H:%M:%S}"
            )
        records[key] = record
        await self._write(record)

    def _remove(self, declaration: Declaration, hosts: list[AgentRecord]) -> None:
        """A deleted declaration: remove the service where it runs; forget it when gone."""
        name = declaration.name
        running = [h for h in hosts if any(s.name == name for s in h.facts.services)]
        online = [h.host_id for h in running if h.online]
        if not running:
            self.working[name] = asyncio.create_task(self._forget(name), name=f"forget-{name}")
            return
        if online:
            self.working[name] = asyncio.create_task(
                self._remove_from(name, sorted(online)), name=f"remove-{name}"
            )

    async def _remove_from(self, name: str, hosts: list[str]) -> None:
        self.say(f"{name} is declared deleted: removing it from {', '.join(hosts)}")
        try:
            await self.fleet.remove_service(name, selector=Selector(hosts=tuple(hosts)))
        except FleetError as exc:
            self.say(f"{name}: removal failed: {exc.message}")
        self.stats.removals += 1

    async def _forget(self, name: str) -> None:
        await self.store.forget(name)
        if self._records is not None:
            for key in [k for k in self._records if k.startswith(f"{name}.")]:
                del self._records[key]
        self.say(f"{name}: removed everywhere; its declaration is forgotten")


def lease_bucket(fleet: Fleet) -> str:
    prefix = fleet.subjects.prefix
    return "SHOAL_LEASES" if prefix == "shoal" else f"SHOAL_LEASES_{prefix.upper()}"
