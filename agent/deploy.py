"""Deploy, roll back and remove services on this host.

A service's containers carry ``shoal.service``, ``shoal.revision`` and
``shoal.spec-hash``. The current and previous revisions' definitions are kept
in the state directory, so a rollback needs nothing from the controller.

A deploy: pull (progress streamed), check the image's architecture, create the
new container, then stop-first (stop the old, start the new) or start-first
(start the new, stop the old once it is healthy), wait for health (or for the
container to keep running through the monitor window), remove the old one.
Any failure removes the new container, restores the old one and reports why,
with the last lines of the failed container's log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from shoal.protocol import (
    PREVIOUS_IMAGE_LABEL,
    SERVICE_LABEL,
    BadRequest,
    Conflict,
    DeployAction,
    DeployArgs,
    DeployFailed,
    DeployPhase,
    DeployResult,
    NotFound,
    Order,
    PullArgs,
    PullResult,
    RemoveArgs,
    RemoveResult,
    RollbackArgs,
    ServicesArgs,
    ServiceSpec,
    ServicesResult,
    ShoalError,
    normalize_arch,
    spec_diff,
    utcnow,
)
from shoal.protocol.service import REVISION_LABEL, SPEC_HASH_LABEL

from .beats import service_statuses
from .context import HostContext, RequestContext
from .engine import ContainerState, Engine, ImageInfo
from .store import Pending, Revision, ServiceRecord, ServiceStore

log = logging.getLogger("shoal.agent")


def discarder(engine: Engine) -> Callable[[str], None]:
    """Removal of a container whatever its state, its anonymous volumes too."""
    return functools.partial(engine.remove_container, force=True, volumes=True)


LOG_TAIL = 20
POLL = 0.25
"""Seconds between container-state polls while waiting for health (bounded by deadlines)."""
FAST_POLL, FAST_POLL_FOR = 0.05, 5.0
"""Polls are this close during the first seconds of the wait, when most health checks
first pass: a check landing just after a 0.25 s poll would otherwise add most of a
poll period to every deploy (about 0.2 s in benchmark 5b)."""


@dataclass
class _Step:
    """Where a deploy is, for the failure report."""

    phase: DeployPhase = DeployPhase.PLANNING


class Deployer:
    """Runs deploy, rollback, remove and services for one agent."""

    def __init__(self, host: HostContext) -> None:
        self.host = host
        self.store: ServiceStore = host.services
        self.claim = host.locks.claim

    def _check_policy(self, spec: ServiceSpec) -> None:
        """Refuse (policy_denied) a service this host's policy does not allow."""
        from .policy import check_service

        check_service(self.host.policy(), spec)

    def _check_image_policy(self, image: str) -> None:
        from .policy import check_image

        check_image(self.host.policy(), image)

    # --- verbs ---------------------------------------------------------------------------

    async def deploy(self, ctx: RequestContext, args: DeployArgs) -> DeployResult:
        spec = args.service
        self._check_policy(spec)
        if (
            args.order == Order.START_FIRST
            and spec.fixed_host_ports
            and spec.network_mode != "host"
        ):
            ports = ", ".join(str(p) for p in spec.fixed_host_ports)
            raise BadRequest(
                f"start-first cannot work with fixed host port(s) {ports}: the new container "
                "could not bind them while the old one still runs; use stop-first"
            )
        if args.order == Order.START_FIRST and spec.network_mode == "host" and spec.ports:
            raise BadRequest("start-first cannot work with host networking and published ports")
        if args.order == Order.START_FIRST and spec.container_name:
            raise BadRequest(
                f"start-first cannot work with container_name {spec.container_name!r}: two"
                " containers cannot have one name; use stop-first"
            )
        if spec.secrets and not args.dry_run:
            missing = [
                m.key
                for m in spec.secrets
                if not m.external and m.key not in args.sealed.get(ctx.host_id, {})
            ]
            if missing:
                raise BadRequest(
                    f"the request carries no sealed value for {', '.join(missing)} for this host"
                )
        with self.claim(spec.name, ctx.request.id):
            record = self.store.get(spec.name)
            if args.dry_run:
                return await self._plan(record, spec)
            return await self._roll(
                ctx,
                spec,
                record,
                args.order,
                args.monitor,
                args.health_timeout,
                rollback=False,
                wait_for=args.wait_for,
                sealed=args.sealed.get(ctx.host_id, {}),
            )

    async def rollback(self, ctx: RequestContext, args: RollbackArgs) -> DeployResult:
        with self.claim(args.service, ctx.request.id):
            record = self.store.get(args.service)
            if record is None or record.current is None:
                raise NotFound(f"service {args.service!r} is not deployed on this host")
            if record.previous is None:
                raise NotFound(f"service {args.service!r} has no previous revision to go back to")
            self._check_policy(record.previous.spec)
            return await self._roll(
                ctx,
                record.previous.spec,
                record,
                args.order,
                args.monitor,
                args.health_timeout,
                rollback=True,
            )

    async def remove(self, ctx: RequestContext, args: RemoveArgs) -> RemoveResult:
        with self.claim(args.service, ctx.request.id):
            containers = await self.host.calls.run(
                self.host.engine.service_containers, args.service
            )
            if not containers and self.store.get(args.service) is None:
                raise NotFound(f"service {args.service!r} is not deployed on this host")
            removed = []
            for container in containers:
                await ctx.progress(DeployPhase.REMOVING, f"removing {container.name}")
                await self.host.calls.run(discarder(self.host.engine), container.id)
                removed.append(container.id)
            self.store.delete(args.service)
            self._keep_files(args.service, ServiceRecord(current=None))
            return RemoveResult(service=args.service, removed=removed)

    async def services(self, args: ServicesArgs) -> ServicesResult:
        return ServicesResult(services=await service_statuses(self.host, args.service))

    async def pull(self, ctx: RequestContext, args: PullArgs) -> PullResult:
        self._check_image_policy(args.image)
        before = await self.host.calls.run(self.host.engine.image_info, args.image)
        info = await self._pull(ctx, args.image)
        return PullResult(
            image=args.image,
            image_id=info.id,
            digest=info.digests[0] if info.digests else "",
            architecture=f"{info.architecture}/{info.variant}"
            if info.variant
            else info.architecture,
            changed=before is None or before.id != info.id,
        )

    # --- the work --------------------------------------------------------------------------

    async def _plan(self, record: ServiceRecord | None, spec: ServiceSpec) -> DeployResult:
        current = record.current if record is not None else None
        live = None
        if current is not None:
            live = await self._live(current.container_id)
        if current is None:
            action, diff = DeployAction.CREATED, ["new service"]
        elif current.spec_hash == spec.spec_hash() and live is not None and live.running:
            action, diff = DeployAction.UNCHANGED, []
        else:
            action = DeployAction.UPDATED
            diff = spec_diff(current.spec, spec) or ["the container is not running: recreate"]
        return DeployResult(
            service=spec.name,
            action=action,
            revision=current.revision
            if current is not None and action == DeployAction.UNCHANGED
            else (current.revision + 1 if current is not None else 1),
            previous_revision=current.revision if current is not None else None,
            image=spec.image,
            spec_hash=spec.spec_hash(),
            diff=diff,
            dry_run=True,
        )

    async def _live(self, container_id: str) -> ContainerState | None:
        try:
            return await self.host.calls.run(self.host.engine.container_state, container_id)
        except NotFound:
            return None

    async def _image(self, ctx: RequestContext, spec: ServiceSpec) -> ImageInfo:
        """The service's image as its platform and pull policy say (pulled unless policy)."""
        facts = self.host.facts()
        if spec.platform is not None:
            _os, _, rest = spec.platform.partition("/")
            arch = normalize_arch(rest.partition("/")[0])[0]
            if arch != facts.arch or _os != facts.os:
                raise DeployFailed(
                    f"service {spec.name} is for platform {spec.platform}, but this host is"
                    f" {facts.os}/{facts.arch}",
                    detail={"phase": DeployPhase.PULLING, "reason": "platform mismatch"},
                )
        if spec.pull_policy in ("missing", "never"):
            info = await self.host.calls.run(self.host.engine.image_info, spec.image)
            if info is not None:
                return info
            if spec.pull_policy == "never":
                raise DeployFailed(
                    f"image {spec.image} is not on this host and the pull policy is never",
                    detail={"phase": DeployPhase.PULLING, "reason": "image missing"},
                )
        return await self._pull(ctx, spec.image)

    async def _pull(self, ctx: RequestContext, image: str) -> ImageInfo:
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(current: int, total: int, status: str) -> None:
            now = time.monotonic()
            if now - last[0] < 0.5:
                return
            last[0] = now
            loop.call_soon_threadsafe(
                lambda: ctx.progress_nowait(
                    DeployPhase.PULLING, f"{image}: {status}", current=current, total=total or None
                )
            )

        await ctx.progress(DeployPhase.PULLING, f"pulling {image}")
        async with ctx.keepalive(DeployPhase.PULLING, f"pulling {image}", every=5.0):
            info = await self.host.calls.run(
                self.host.engine.pull_image, image, progress, timeout=self.host.calls.long_timeout
            )
        host_arch = self.host.facts()
        want = (host_arch.arch, host_arch.variant)
        got = normalize_arch(info.architecture)[0], info.variant
        if info.architecture and got[0] != want[0]:
            raise DeployFailed(
                f"image {image} is for {info.os}/{info.architecture}"
                f"{'/' + info.variant if info.variant else ''}, "
                f"but this host is {host_arch.os}/{want[0]}{'/' + want[1] if want[1] else ''}",
                detail={"phase": DeployPhase.PULLING, "reason": "architecture mismatch"},
            )
        return info

    async def _roll(
        self,
        ctx: RequestContext,
        spec: ServiceSpec,
        record: ServiceRecord | None,
        order: Order,
        monitor: float,
        health_timeout: float,
        *,
        rollback: bool,
        wait_for: str = "running",
        sealed: Mapping[str, str] | None = None,
    ) -> DeployResult:
        calls, engine = self.host.calls, self.host.engine
        current = record.current if record is not None else None
        step = _Step()
        if record is not None and record.pending is not None:
            raise Conflict(
                f"service {spec.name!r} has an unfinished operation; the agent recovers it at start"
            )
        try:
            step.phase = DeployPhase.PULLING
            info = await self._image(ctx, spec)
        except ShoalError as exc:
            raise _failed(exc, step.phase, [], current.revision if current else None) from exc

        old = await self._live(current.container_id) if current is not None else None
        unchanged = (
            not rollback
            and current is not None
            and current.spec_hash == spec.spec_hash()
            and current.image_id == info.id
            and old is not None
            and (old.running or (wait_for == "completed" and _completed(old)))
        )
        if unchanged:
            assert current is not None
            return DeployResult(
                service=spec.name,
                action=DeployAction.UNCHANGED,
                revision=current.revision,
                previous_revision=record.previous.revision if record and record.previous else None,
                image=spec.image,
                image_id=info.id,
                spec_hash=current.spec_hash,
                container_id=current.container_id,
            )

        if rollback:
            assert record is not None and record.previous is not None
            revision = record.previous.revision
        else:
            known = [r.revision for r in (current, record.previous if record else None) if r]
            revision = max(known, default=0) + 1
        labels = {
            SERVICE_LABEL: spec.name,
            REVISION_LABEL: str(revision),
            SPEC_HASH_LABEL: spec.spec_hash(),
        }
        if current is not None:
            labels[PREVIOUS_IMAGE_LABEL] = current.image_id
        stale = [
            c
            for c in await calls.run(engine.service_containers, spec.name)
            if old is None or c.id != old.id
        ]
        for c in stale:  # leftovers of an interrupted operation
            await calls.run(discarder(engine), c.id)

        new_id = ""
        old_stopped = False
        base = record if record is not None else ServiceRecord(current=None)
        pending = Pending(
            revision=Revision(
                revision=revision,
                spec=spec,
                spec_hash=spec.spec_hash(),
                image_id=info.id,
                container_id="",
                deployed_at=utcnow(),
            )
        )
        self.store.put(spec.name, base.model_copy(update={"pending": pending}))
        renamed: str | None = None
        try:
            step.phase = DeployPhase.CREATING
            await ctx.progress(step.phase, f"creating revision {revision}")
            for attachment in spec.networks:
                await calls.run(engine.ensure_network, attachment.network)
            files = self._files(spec, revision, rollback=rollback, sealed=sealed or {})
            new_id = await calls.run(
                engine.create_service_container, spec, f"{spec.name}.r{revision}", labels, files
            )
            pending = Pending(revision=pending.revision.model_copy(update={"container_id": new_id}))
            self.store.put(spec.name, base.model_copy(update={"pending": pending}))
            if old is not None and old.running and order == Order.STOP_FIRST:
                step.phase = DeployPhase.STOPPING
                await ctx.progress(step.phase, f"stopping {old.name}")
                await self._stop(old, current.spec if current else spec)
                old_stopped = True
            if spec.container_name:
                renamed = await self._take_name(spec.container_name, new_id, old, current)
            step.phase = DeployPhase.STARTING
            await ctx.progress(step.phase, f"starting {spec.name}.r{revision}")
            await calls.run(engine.start_container, new_id)
            step.phase = DeployPhase.HEALTH
            if wait_for == "completed":
                await self._wait_completed(ctx, new_id, health_timeout)
            else:
                await self._wait_healthy(ctx, new_id, spec, monitor, health_timeout)
        except ShoalError as exc:
            logs = await self._logs(new_id) if new_id else []
            restored = await self._restore(ctx, new_id, old, current, old_stopped, renamed)
            self._forget_pending(spec.name, base)
            self._keep_files(spec.name, base)
            raise _failed(exc, step.phase, logs, restored) from exc
        pending = pending.model_copy(update={"healthy": True})
        self.store.put(spec.name, base.model_copy(update={"pending": pending}))

        if old is not None:
            await ctx.progress(DeployPhase.REMOVING, f"removing {old.name}")
            try:
                if old.running and order == Order.START_FIRST:
                    await self._stop(old, current.spec if current else spec)
                await calls.run(discarder(engine), old.id)
            except ShoalError as exc:
                log.warning("could not remove the old container %s: %s", old.name, exc.message)
        new_revision = Revision(
            revision=revision,
            spec=spec,
            spec_hash=spec.spec_hash(),
            image_id=info.id,
            container_id=new_id,
            deployed_at=utcnow(),
        )
        record = ServiceRecord(current=new_revision, previous=current)
        self.store.put(spec.name, record)
        self._keep_files(spec.name, record)
        if rollback:
            action = DeployAction.ROLLED_BACK
        else:
            action = DeployAction.UPDATED if current is not None else DeployAction.CREATED
        return DeployResult(
            service=spec.name,
            action=action,
            revision=revision,
            previous_revision=current.revision if current is not None else None,
            image=spec.image,
            image_id=info.id,
            spec_hash=spec.spec_hash(),
            container_id=new_id,
            diff=spec_diff(current.spec if current else None, spec),
        )

    def _files(
        self, spec: ServiceSpec, revision: int, *, rollback: bool, sealed: Mapping[str, str]
    ) -> dict[str, str]:
        """The secret and config files the revision mounts: written now, or kept (rollback)."""
        files = self.host.files
        if rollback:
            return files.existing(spec.name, revision, spec.secrets)
        return files.materialize(spec.name, revision, spec.secrets, sealed)

    def _keep_files(self, name: str, record: ServiceRecord) -> None:
        """Drop the files of revisions the record no longer keeps."""
        kept = {r.revision for r in (record.current, record.previous) if r is not None}
        try:
            self.host.files.keep_only(name, kept)
        except OSError as exc:
            log.warning("could not remove old secret files of %s: %s", name, exc)

    async def _take_name(
        self,
        name: str,
        new_id: str,
        old: ContainerState | None,
        current: Revision | None,
    ) -> str | None:
        """Give the new container ``container_name``; the old one keeps its revision's name.

        Returns the old container's name before it was renamed (to restore it on failure).
        """
        calls, engine = self.host.calls, self.host.engine
        renamed = None
        if old is not None and old.name == name and current is not None:
            await calls.run(engine.rename_container, old.id, f"{name}.r{current.revision}")
            renamed = name
        await calls.run(engine.rename_container, new_id, name)
        return renamed

    async def _wait_completed(
        self, ctx: RequestContext, container_id: str, health_timeout: float
    ) -> None:
        """A task (service_completed_successfully): it must exit 0 within the timeout."""
        engine = self.host.engine
        started = time.monotonic()
        deadline = started + health_timeout
        await ctx.progress(DeployPhase.HEALTH, "waiting for the task to complete")
        while True:
            state = await self.host.calls.run(engine.container_state, container_id)
            if not state.running and state.status != "created":
                if state.exit_code == 0:
                    return
                raise DeployFailed(
                    f"the task exited with code {state.exit_code}", detail={"reason": "exited"}
                )
            now = time.monotonic()
            if now >= deadline:
                raise DeployFailed(
                    f"the task did not complete within {health_timeout:g}s",
                    detail={"reason": "health timeout"},
                )
            pause = FAST_POLL if now - started < FAST_POLL_FOR else POLL
            await asyncio.sleep(min(pause, deadline - now))

    def _forget_pending(self, name: str, base: ServiceRecord) -> None:
        if base.current is None:
            self.store.delete(name)
        else:
            self.store.put(name, base.model_copy(update={"pending": None}))

    async def recover(self) -> None:
        """Converge every service after a crash: one revision runs, no orphans remain.

        A deploy that was interrupted after its new container became healthy is
        completed; one interrupted earlier is undone and the previous revision
        runs again.
        """
        engine = self.host.engine
        for name in self.store.names():
            record = self.store.get(name)
            if record is None:
                continue
            containers = await self.host.calls.run(engine.service_containers, name)
            pending = record.pending
            keep: str | None = record.current.container_id if record.current else None
            if pending is not None:
                new = next((c for c in containers if c.id == pending.revision.container_id), None)
                if pending.healthy and new is not None:
                    log.warning(
                        "recovery: completing the deploy of %s revision %d",
                        name,
                        pending.revision.revision,
                    )
                    record = ServiceRecord(current=pending.revision, previous=record.current)
                    keep = new.id
                    if not new.running:
                        await self.host.calls.run(engine.start_container, new.id)
                else:
                    log.warning(
                        "recovery: undoing the interrupted deploy of %s revision %d",
                        name,
                        pending.revision.revision,
                    )
                    record = record.model_copy(update={"pending": None})
            for container in containers:
                if container.id != keep:
                    log.warning("recovery: removing %s of service %s", container.name, name)
                    await self.host.calls.run(discarder(engine), container.id)
            if record.current is None:
                self.store.delete(name)
                continue
            current = next((c for c in containers if c.id == keep), None)
            if current is not None and not current.running and pending is not None:
                # stop-first had stopped it before the crash
                log.warning("recovery: starting %s again", current.name)
                await self.host.calls.run(engine.start_container, current.id)
            self.store.put(name, record)

    async def _stop(self, container: ContainerState, spec: ServiceSpec) -> None:
        grace = int(spec.stop_grace_period) if spec.stop_grace_period is not None else 10
        await self.host.calls.run(
            self.host.engine.stop_container, container.id, grace, timeout=grace + 30
        )

    async def _wait_healthy(
        self,
        ctx: RequestContext,
        container_id: str,
        spec: ServiceSpec,
        monitor: float,
        health_timeout: float,
    ) -> None:
        """Healthy by its healthcheck, or running through the monitor window."""
        engine = self.host.engine
        started = time.monotonic()
        first = await self.host.calls.run(engine.container_state, container_id)
        # A healthcheck from the spec, or one the image defines (unless the spec turns it off).
        disabled = spec.healthcheck is not None and spec.healthcheck.test == ("NONE",)
        has_health = not disabled and (spec.healthcheck is not None or bool(first.health))
        deadline = started + (health_timeout if has_health else monitor)
        await ctx.progress(
            DeployPhase.HEALTH,
            "waiting for healthy" if has_health else f"running for {monitor:g}s",
        )
        last_beat = started
        while True:
            state = await self.host.calls.run(engine.container_state, container_id)
            if not state.running or state.restart_count > 0:
                raise DeployFailed(
                    f"the container exited with code {state.exit_code}"
                    if not state.running
                    else "the container restarted",
                    detail={"reason": "exited"},
                )
            if has_health:
                if state.health == "healthy":
                    return
                if state.health == "unhealthy":
                    raise DeployFailed("the container is unhealthy", detail={"reason": "unhealthy"})
            now = time.monotonic()
            if now >= deadline:
                if has_health:
                    raise DeployFailed(
                        f"the container was not healthy within {health_timeout:g}s",
                        detail={"reason": "health timeout"},
                    )
                return
            if now - last_beat >= 2.0:
                last_beat = now
                await ctx.progress(
                    DeployPhase.HEALTH,
                    state.health or "running",
                    current=now - started,
                    total=deadline - started,
                )
            pause = FAST_POLL if now - started < FAST_POLL_FOR else POLL
            await asyncio.sleep(min(pause, deadline - now))

    async def _logs(self, container_id: str) -> list[str]:
        try:
            return await self.host.calls.run(
                self.host.engine.container_logs, container_id, LOG_TAIL
            )
        except ShoalError:
            return []

    async def _restore(
        self,
        ctx: RequestContext,
        new_id: str,
        old: ContainerState | None,
        current: Revision | None,
        old_stopped: bool,
        renamed: str | None = None,
    ) -> int | None:
        """Remove the failed container and bring the previous one back. Its revision."""
        engine = self.host.engine
        await ctx.progress(DeployPhase.ROLLING_BACK, "restoring the previous revision")
        if new_id:
            try:
                await self.host.calls.run(discarder(engine), new_id)
            except ShoalError as exc:
                log.error("could not remove the failed container %s: %s", new_id[:12], exc.message)
        if old is None or current is None:
            return None
        if renamed is not None:
            try:
                await self.host.calls.run(engine.rename_container, old.id, renamed)
            except ShoalError as exc:
                log.error("could not give %s its name back: %s", old.name, exc.message)
        if old_stopped:
            try:
                await self.host.calls.run(engine.start_container, old.id)
            except ShoalError as exc:
                log.error("could not restart the previous container %s: %s", old.name, exc.message)
                return None
        return current.revision


def _failed(
    exc: ShoalError, phase: DeployPhase, logs: list[str], restored: int | None
) -> DeployFailed:
    if isinstance(exc, DeployFailed):
        reason = exc.detail.get("reason", exc.message)
    else:
        reason = f"{exc.code}: {exc.message}"
    return DeployFailed(
        f"{phase} failed: {exc.message}"
        + (f"; restored revision {restored}" if restored is not None else ""),
        detail={
            "phase": str(phase),
            "reason": reason,
            "logs": logs,
            "restored_revision": restored,
            **({"cause": str(exc.code)} if not isinstance(exc, DeployFailed) else {}),
        },
    )


def _completed(state: ContainerState) -> bool:
    return not state.running and state.status == "exited" and state.exit_code == 0
