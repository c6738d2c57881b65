"""Prune and df rules, as pure functions over a :class:`DiskSnapshot`.

The agent decides every removal itself, against the same rules for a dry run
and a real run, instead of calling the engine's prune endpoints: their
behaviour differs across Engine API versions (a plain volume prune removes
named volumes on 1.41 but only anonymous ones from 1.42 on) and they know
nothing of Shoal's protection rules.

Protection:

* anything labelled ``shoal.keep=true``;
* containers whose name matches a keep pattern, images with a tag matching one;
* containers of a Shoal-deployed service (label ``shoal.service``), and the
  images of their current and previous revisions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shoal.protocol import (
    KEEP_LABEL,
    PREVIOUS_IMAGE_LABEL,
    SERVICE_LABEL,
    DfResult,
    DiskKind,
    DiskUsage,
    LabelFilter,
    PruneArgs,
    PruneKind,
)

from .engine import ContainerRecord, DiskSnapshot, ImageRecord

REMOVABLE_STATES = frozenset({"exited", "created", "dead"})


@dataclass(frozen=True, slots=True)
class KeepRules:
    """Agent-side protection patterns (comma-separated glob lists in the config)."""

    images: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()

    def keeps_image(self, image: ImageRecord) -> bool:
        refs = [*image.tags, *image.digests, image.id, image.id.removeprefix("sha256:")]
        repos = [t.rsplit(":", 1)[0] for t in image.tags if ":" in t]
        return any(fnmatch.fnmatchcase(ref, p) for p in self.images for ref in [*refs, *repos])

    def keeps_container(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.containers)


@dataclass(frozen=True, slots=True)
class Removal:
    """One object to remove."""

    kind: PruneKind
    id: str
    name: str = ""
    tags: tuple[str, ...] = ()
    size: int = 0


@dataclass(slots=True)
class PrunePlan:
    removals: dict[PruneKind, list[Removal]] = field(default_factory=dict)
    protected: int = 0
    skipped: dict[PruneKind, str] = field(default_factory=dict)


def is_kept(labels: dict[str, str]) -> bool:
    return labels.get(KEEP_LABEL, "").lower() == "true"


def _matches(labels: dict[str, str], filters: Iterable[LabelFilter]) -> bool:
    return all(f.matches(labels) for f in filters)


def _old_enough(created: datetime | None, cutoff: datetime | None) -> bool:
    if cutoff is None:
        return True
    return created is not None and created < cutoff


def service_images(snapshot: DiskSnapshot) -> set[str]:
    """Image ids that a deployed service's current or previous revision needs."""
    by_ref: dict[str, str] = {}
    for image in snapshot.images:
        by_ref[image.id] = image.id
        by_ref[image.id.removeprefix("sha256:")] = image.id
        for ref in (*image.tags, *image.digests):
            by_ref[ref] = image.id
    needed: set[str] = set()
    for container in snapshot.containers:
        if SERVICE_LABEL not in container.labels:
            continue
        needed.add(container.image_id)
        previous = container.labels.get(PREVIOUS_IMAGE_LABEL)
        if previous and previous in by_ref:
            needed.add(by_ref[previous])
    return needed


def plan_prune(
    snapshot: DiskSnapshot, args: PruneArgs, keep: KeepRules, now: datetime
) -> PrunePlan:
    """Decide what a prune removes, in the order it must happen."""
    plan = PrunePlan()
    filters = args.label_filters()
    cutoff = now - timedelta(seconds=args.until) if args.until else None
    kinds = set(args.kinds)

    # Containers first: what they free decides which images, volumes and networks are unused.
    removed_containers: set[str] = set()
    if PruneKind.CONTAINERS in kinds:
        removals = []
        for c in snapshot.containers:
            if c.state not in REMOVABLE_STATES or not _old_enough(c.created, cutoff):
                continue
            if not _matches(c.labels, filters):
                continue
            if is_kept(c.labels) or SERVICE_LABEL in c.labels or keep.keeps_container(c.name):
                plan.protected += 1
                continue
            removals.append(Removal(PruneKind.CONTAINERS, c.id, c.name, size=c.size))
            removed_containers.add(c.id)
        plan.removals[PruneKind.CONTAINERS] = removals
    remaining = [c for c in snapshot.containers if c.id not in removed_containers]

    if PruneKind.IMAGES in kinds:
        plan.removals[PruneKind.IMAGES] = _plan_images(
            snapshot, remaining, args, keep, filters, cutoff, plan
        )

    if PruneKind.VOLUMES in kinds:
        used = {name for c in remaining for name in c.volumes}
        removals = []
        for v in snapshot.volumes:
            if v.name in used or not (args.volumes_all or v.anonymous):
                continue
            if not _old_enough(v.created, cutoff) or not _matches(v.labels, filters):
                continue
            if is_kept(v.labels):
                plan.protected += 1
                continue
            removals.append(Removal(PruneKind.VOLUMES, v.name, v.name, size=v.size))
        plan.removals[PruneKind.VOLUMES] = removals

    if PruneKind.NETWORKS in kinds:
        used = {ref for c in remaining for ref in c.networks}
        removals = []
        for n in snapshot.networks:
            if n.builtin or n.id in used or n.name in used:
                continue
            if not _old_enough(n.created, cutoff) or not _matches(n.labels, filters):
                continue
            if is_kept(n.labels):
                plan.protected += 1
                continue
            removals.append(Removal(PruneKind.NETWORKS, n.id, n.name))
        plan.removals[PruneKind.NETWORKS] = removals

    if PruneKind.BUILD_CACHE in kinds:
        if filters:
            plan.skipped[PruneKind.BUILD_CACHE] = "build cache has no labels; label filters given"
            plan.removals[PruneKind.BUILD_CACHE] = []
        else:
            plan.removals[PruneKind.BUILD_CACHE] = [
                Removal(PruneKind.BUILD_CACHE, b.id, size=b.size)
                for b in snapshot.build_cache
                if not b.in_use and _old_enough(b.last_used or b.created, cutoff)
            ]
    return plan


def _plan_images(
    snapshot: DiskSnapshot,
    remaining: list[ContainerRecord],
    args: PruneArgs,
    keep: KeepRules,
    filters: tuple[LabelFilter, ...],
    cutoff: datetime | None,
    plan: PrunePlan,
) -> list[Removal]:
    used = {c.image_id for c in remaining}
    protected_ids = service_images(snapshot)
    candidates: dict[str, ImageRecord] = {}
    for image in snapshot.images:
        if image.id in used or not (args.all_images or image.dangling):
            continue
        if not _old_enough(image.created, cutoff) or not _matches(image.labels, filters):
            continue
        if is_kept(image.labels) or image.id in protected_ids or keep.keeps_image(image):
            plan.protected += 1
            continue
        candidates[image.id] = image
    # An image that is the parent of one we keep cannot go; children go before parents.
    while True:
        parents_of_kept = {
            i.parent_id for i in snapshot.images if i.id not in candidates and i.parent_id
        }
        blocked = parents_of_kept & candidates.keys()
        if not blocked:
            break
        for image_id in blocked:
            del candidates[image_id]
    ordered = _children_first(list(candidates.values()))
    return [
        Removal(PruneKind.IMAGES, i.id, i.tags[0] if i.tags else "", i.tags, i.unique_size)
        for i in ordered
    ]


def _children_first(images: list[ImageRecord]) -> list[ImageRecord]:
    ids = {i.id for i in images}
    depth: dict[str, int] = {}
    parent = {i.id: i.parent_id for i in images}

    def level(image_id: str) -> int:
        if image_id not in depth:
            p = parent.get(image_id, "")
            depth[image_id] = 0 if p not in ids else level(p) + 1
        return depth[image_id]

    return sorted(images, key=lambda i: (-level(i.id), i.created, i.id))


def disk_usage(snapshot: DiskSnapshot) -> DfResult:
    """Per kind: count, active, size and reclaimable bytes, as ``docker system df``."""
    used_images = {c.image_id for c in snapshot.containers}
    images = snapshot.images
    image_usage = DiskUsage(
        count=len(images),
        active=sum(i.id in used_images for i in images),
        size=snapshot.layers_size or sum(i.size for i in images),
        reclaimable=sum(i.unique_size for i in images if i.id not in used_images),
    )
    containers = snapshot.containers
    container_usage = DiskUsage(
        count=len(containers),
        active=sum(c.state == "running" for c in containers),
        size=sum(c.size for c in containers),
        reclaimable=sum(c.size for c in containers if c.state in REMOVABLE_STATES),
    )
    used_volumes = {v for c in containers for v in c.volumes}
    volumes = snapshot.volumes
    volume_usage = DiskUsage(
        count=len(volumes),
        active=sum(v.name in used_volumes for v in volumes),
        size=sum(v.size for v in volumes),
        reclaimable=sum(v.size for v in volumes if v.name not in used_volumes),
    )
    cache = snapshot.build_cache
    cache_usage = DiskUsage(
        count=len(cache),
        active=sum(b.in_use for b in cache),
        size=sum(b.size for b in cache if not b.shared),
        reclaimable=sum(b.size for b in cache if not b.in_use and not b.shared),
    )
    return DfResult(
        usage={
            DiskKind.IMAGES: image_usage,
            DiskKind.CONTAINERS: container_usage,
            DiskKind.VOLUMES: volume_usage,
            DiskKind.BUILD_CACHE: cache_usage,
        },
        api_version=snapshot.api_version,
    )
