"""Desired state: declarations of which services belong on which hosts, and convergence.

``shoal apply`` writes one :class:`Declaration` per service to the ``SHOAL_DESIRED``
key-value bucket; its ``generation`` grows with every change. The reconciler
(:mod:`.reconcile`, ``shoal serve``) records what it did per service and host in
``SHOAL_CONVERGENCE``. :func:`evaluate` tells, from a declaration, a host's heartbeat
and that record, where the host stands: it is what ``shoal status`` shows and what the
reconciler acts on, so both always agree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from shoal.protocol import RolloutConfig, Selector, ServiceSpec, Subjects, utcnow

from .errors import FleetError, KeyExists, WrongRevision
from .registry import AgentRecord
from .transport import Bucket, BucketSpec, JetStream

DESIRED_BUCKET = "SHOAL_DESIRED"
CONVERGENCE_BUCKET = "SHOAL_CONVERGENCE"
UNHEALTHY_GRACE = 30.0
"""Seconds a running container may stay unhealthy before its host counts as drifted."""
BACKOFF_BASE, BACKOFF_MAX = 5.0, 600.0
"""Seconds before the first retry of a failed host, doubling per failure up to the max."""
DEPLOYING_FOR = 900.0
"""Seconds a host stays ``deploying`` in the record before it counts as lost (a dead
reconciler's rollout): then it is tried again."""


class DesiredError(FleetError):
    """A declaration cannot be stored or read."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Declaration(_Model):
    """One service as it should run, on which hosts, and how to roll it out."""

    service: ServiceSpec
    selector: Selector = Field(default_factory=Selector)
    update: RolloutConfig = Field(default_factory=RolloutConfig)
    rollback: RolloutConfig | None = None
    health_timeout: float = Field(default=300.0, gt=0, le=86400)
    wait_for: Literal["running", "completed"] = "running"
    generation: int = Field(default=1, ge=1)
    deleted: bool = Field(default=False, description="Hosts remove the service.")
    applied_at: AwareDatetime = Field(default_factory=utcnow)
    applied_by: str = ""

    @property
    def name(self) -> str:
        return self.service.name

    @cached_property
    def spec_hash(self) -> str:
        """The service's spec hash, computed once (every pass compares every host's)."""
        return self.service.spec_hash()

    def same_intent(self, other: Declaration) -> bool:
        """Whether ``other`` declares the same thing (generation and stamps aside)."""
        keys = {"generation", "applied_at", "applied_by"}
        return self.model_dump(exclude=keys) == other.model_dump(exclude=keys)


class HostState(StrEnum):
    CONVERGED = "converged"
    PENDING = "pending"  # offline: converges when it is back
    DEPLOYING = "deploying"
    FAILED = "failed"
    DRIFTED = "drifted"  # online and not as declared: the reconciler deploys
    REMOVING = "removing"  # a deleted declaration: the host still runs the service


class Record(_Model):
    """What the reconciler did for one service on one host (``SHOAL_CONVERGENCE``)."""

    service: str
    host: str
    generation: int
    state: Literal["deploying", "converged", "failed"]
    since: AwareDatetime = Field(default_factory=utcnow)
    reason: str = ""
    attempts: int = Field(default=0, ge=0, description="Failures for this generation.")
    next_try: AwareDatetime | None = None

    @property
    def key(self) -> str:
        return record_key(self.service, self.host)


class Convergence(BaseModel):
    """Where one host stands for one declaration (``shoal status``)."""

    model_config = ConfigDict(frozen=True)

    service: str
    host: str
    generation: int
    state: HostState
    reason: str = ""
    since: AwareDatetime | None = None
    next_try: AwareDatetime | None = None
    last_seen: AwareDatetime | None = None
    revision: int | None = None


def record_key(service: str, host: str) -> str:
    return f"{service}.{host}"


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failure of one generation on one host."""
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


def failed_record(
    previous: Record | None, declaration: Declaration, host: str, reason: str
) -> Record:
    """The record of a failure: attempts counted per generation, the next try backed off."""
    same = previous is not None and previous.generation == declaration.generation
    attempts = (previous.attempts if same and previous is not None else 0) + 1
    now = utcnow()
    return Record(
        service=declaration.name,
        host=host,
        generation=declaration.generation,
        state="failed",
        since=now,
        reason=reason,
        attempts=attempts,
        next_try=now + timedelta(seconds=backoff(attempts)),
    )


@dataclass(frozen=True)
class Drift:
    """Why a host needs a deploy (None from :func:`drift` when it does not)."""

    reason: str


def drift(
    declaration: Declaration,
    record: AgentRecord,
    unhealthy_since: datetime | None,
    now: datetime,
    grace: float = UNHEALTHY_GRACE,
) -> Drift | None:
    """What differs between the declaration and the host's heartbeat, if anything."""
    beat = next((s for s in record.facts.services if s.name == declaration.name), None)
    if beat is None or beat.state == "missing":
        return Drift("the service is not on the host")
    if beat.spec_hash != declaration.spec_hash:
        return Drift(f"runs another spec ({beat.spec_hash or 'unknown'})")
    if declaration.wait_for == "completed":
        return None if beat.state in ("running", "exited") else Drift(f"the task is {beat.state}")
    if beat.state != "running":
        return Drift(f"the container is {beat.state}")
    if (
        beat.health == "unhealthy"
        and unhealthy_since is not None
        and (now - unhealthy_since).total_seconds() >= grace
    ):
        return Drift(f"unhealthy for more than {grace:g}s")
    return None


def evaluate(
    declaration: Declaration,
    agent: AgentRecord,
    record: Record | None,
    now: datetime,
    unhealthy_since: datetime | None = None,
) -> Convergence:
    """Where ``agent``'s host stands for ``declaration``; the reconciler deploys the
    ``drifted`` ones, and ``failed`` ones once their ``next_try`` has passed."""
    beat = next((s for s in agent.facts.services if s.name == declaration.name), None)
    base = {
        "service": declaration.name,
        "host": agent.host_id,
        "generation": declaration.generation,
        "last_seen": agent.last_seen,
        "revision": beat.revision if beat is not None and beat.state != "missing" else None,
    }
    if declaration.deleted:
        if beat is None or beat.state == "missing":
            return Convergence(**base, state=HostState.CONVERGED)
        if not agent.online:
            return Convergence(**base, state=HostState.PENDING, reason="offline")
        return Convergence(
            **base, state=HostState.REMOVING, reason="the service is declared deleted"
        )
    current = record is not None and record.generation == declaration.generation
    if not agent.online:
        return Convergence(**base, state=HostState.PENDING, reason="offline")
    found = drift(declaration, agent, unhealthy_since, now)
    if found is not None and fresh_rollout(record, declaration, agent):
        found = None  # the heartbeat predates the rollout that converged the host
    if found is None:
        converged = current and record is not None and record.state == "converged"
        return Convergence(
            **base,
            state=HostState.CONVERGED,
            since=record.since if converged and record is not None else None,
        )
    if (
        current
        and record is not None
        and record.state == "deploying"
        and (now - record.since).total_seconds() < DEPLOYING_FOR
    ):
        return Convergence(**base, state=HostState.DEPLOYING, since=record.since)
    if current and record is not None and record.state == "failed":
        return Convergence(
            **base,
            state=HostState.FAILED,
            reason=record.reason,
            since=record.since,
            next_try=record.next_try,
        )
    return Convergence(**base, state=HostState.DRIFTED, reason=found.reason)


def fresh_rollout(record: Record | None, declaration: Declaration, agent: AgentRecord) -> bool:
    """Whether a rollout of this generation converged the host after its last heartbeat.

    The heartbeat then shows the host as it was before the deploy; the rollout's health
    gate vouches for it until a newer heartbeat says otherwise.
    """
    return (
        record is not None
        and record.state == "converged"
        and record.generation == declaration.generation
        and agent.last_seen < record.since
    )


def matches(declaration: Declaration, agent: AgentRecord) -> bool:
    return declaration.selector.matches(agent.host_id, agent.facts.selectable())


class DesiredStore:
    """The declarations and convergence records, in two JetStream key-value buckets."""

    def __init__(self, js: JetStream, subjects: Subjects) -> None:
        self.js = js
        suffix = (
            ""
            if subjects.prefix == "shoal"
            else "_" + re.sub(r"[^A-Za-z0-9_-]", "_", subjects.prefix).upper()
        )
        self.desired_name = DESIRED_BUCKET + suffix
        self.convergence_name = CONVERGENCE_BUCKET + suffix
        self._desired: Bucket | None = None
        self._records: Bucket | None = None

    async def desired(self) -> Bucket:
        if self._desired is None:
            self._desired = await self.js.bucket(
                BucketSpec(
                    self.desired_name, "Shoal desired state: one declaration per service", 0
                ),
                action="desired state",
            )
        return self._desired

    async def records(self) -> Bucket:
        if self._records is None:
            self._records = await self.js.bucket(
                BucketSpec(self.convergence_name, "Shoal convergence per service and host", 0),
                action="convergence records",
            )
        return self._records

    # -- declarations

    async def declarations(self) -> dict[str, Declaration]:
        bucket = await self.desired()
        out: dict[str, Declaration] = {}
        for key, raw in (await bucket.entries()).items():
            try:
                out[key] = Declaration.model_validate_json(raw)
            except ValidationError:
                continue  # a bad entry is skipped, not fatal; `shoal desired` names it
        return out

    async def declare(self, declaration: Declaration) -> tuple[Declaration, bool]:
        """Store ``declaration`` (a new generation if it changes anything); (stored, changed)."""
        bucket = await self.desired()
        for _ in range(5):
            found = await bucket.entry(declaration.name)
            if found is None:
                stored = declaration.model_copy(update={"generation": 1})
                try:
                    await bucket.create(declaration.name, stored.model_dump_json().encode())
                except KeyExists:
                    continue
                return stored, True
            raw, revision = found
            try:
                old: Declaration | None = Declaration.model_validate_json(raw)
            except ValidationError:
                old = None
            if old is not None and old.same_intent(declaration):
                return old, False
            generation = (old.generation if old is not None else 0) + 1
            stored = declaration.model_copy(update={"generation": generation})
            try:
                await bucket.update(
                    declaration.name, stored.model_dump_json().encode(), last=revision
                )
            except WrongRevision:
                continue
            return stored, True
        raise DesiredError(f"declaration {declaration.name!r} keeps changing; try again")

    async def withdraw(self, service: str, applied_by: str = "") -> Declaration | None:
        """Mark ``service`` deleted (hosts remove it); None if it was not declared."""
        bucket = await self.desired()
        found = await bucket.entry(service)
        if found is None:
            return None
        old = Declaration.model_validate_json(found[0])
        if old.deleted:
            return old
        stored = old.model_copy(
            update={
                "deleted": True,
                "generation": old.generation + 1,
                "applied_at": utcnow(),
                "applied_by": applied_by,
            }
        )
        await bucket.update(service, stored.model_dump_json().encode(), last=found[1])
        return stored

    async def forget(self, service: str) -> None:
        """Drop a deleted declaration once no host runs the service, and its records."""
        await (await self.desired()).purge(service)
        bucket = await self.records()
        for key in [k for k in await bucket.entries() if k.startswith(f"{service}.")]:
            await bucket.purge(key)

    # -- records

    async def all_records(self) -> dict[str, Record]:
        bucket = await self.records()
        out: dict[str, Record] = {}
        for key, raw in (await bucket.entries()).items():
            try:
                out[key] = Record.model_validate_json(raw)
            except ValidationError:
                continue
        return out

    async def write(self, record: Record) -> None:
        await (await self.records()).put(record.key, record.model_dump_json().encode())


def statuses(
    declarations: Mapping[str, Declaration],
    agents: Iterable[AgentRecord],
    records: Mapping[str, Record],
    now: datetime | None = None,
) -> list[Convergence]:
    """Every (declaration, selected host) pair, evaluated; sorted by service and host."""
    now = now or utcnow()
    hosts = list(agents)
    out = []
    for name in sorted(declarations):
        declaration = declarations[name]
        for agent in hosts:
            if declaration.deleted:
                beat = any(s.name == name for s in agent.facts.services)
                if not beat:
                    continue
            elif not matches(declaration, agent):
                continue
            record = records.get(record_key(name, agent.host_id))
            out.append(evaluate(declaration, agent, record, now))
    return sorted(out, key=lambda c: (c.service, c.host))


def status_json(items: Iterable[Convergence]) -> list[dict[str, object]]:
    return [json.loads(c.model_dump_json()) for c in items]
