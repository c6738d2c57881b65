"""Images: list, inspect, pull, remove."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import docker
import docker.errors

from shoal.protocol import DockerError, ImageSummary

from ..engine import ImageInfo, ImageRecord, PullProgress
from .convert import engine_time
from .errors import is_status, translate_docker_errors

NO_TAG = "<none>:<none>"


def list_images(client: docker.DockerClient, all_images: bool) -> list[ImageSummary]:
    """``GET /images/json``, then one inspect per image for its platform."""
    images = []
    with translate_docker_errors("list images"):
        raw = client.api.images(all=all_images)
        for item in raw:
            try:
                details = client.api.inspect_image(item["Id"])
            except docker.errors.APIError as exc:
                if is_status(exc, 404):
                    continue  # removed since it was listed
                raise
            tags = [t for t in item.get("RepoTags") or [] if t != NO_TAG]
            digests = [d for d in item.get("RepoDigests") or [] if d != "<none>@<none>"]
            images.append(
                ImageSummary(
                    id=item["Id"],
                    repo_tags=tags,
                    repo_digests=digests,
                    created=datetime.fromtimestamp(item.get("Created") or 0, UTC),
                    size=max(0, int(item.get("Size") or 0)),
                    architecture=str(details.get("Architecture") or ""),
                    variant=str(details.get("Variant") or ""),
                    os=str(details.get("Os") or ""),
                )
            )
    return images


def image_info(client: docker.DockerClient, ref: str) -> ImageInfo | None:
    with translate_docker_errors(f"inspect image {ref}"):
        try:
            raw = client.api.inspect_image(ref)
        except docker.errors.APIError as exc:
            if is_status(exc, 404):
                return None
            raise
    return ImageInfo(
        id=raw["Id"],
        digests=tuple(raw.get("RepoDigests") or ()),
        architecture=raw.get("Architecture", ""),
        variant=raw.get("Variant", "") or "",
        os=raw.get("Os", ""),
    )


def pull_image(client: docker.DockerClient, ref: str, progress: PullProgress) -> ImageInfo:
    """Pull with the host's own credentials, streaming byte progress; errors in the stream fail."""
    repository, tag = _split_ref(ref)
    layers: dict[str, tuple[int, int]] = {}
    with translate_docker_errors(f"pull {ref}"):
        for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise DockerError(f"pull {ref}: {event.get('error')}")
            detail = event.get("progressDetail") or {}
            layer = event.get("id")
            if layer and detail.get("total"):
                layers[layer] = (int(detail.get("current") or 0), int(detail["total"]))
            elif layer and event.get("status") in ("Download complete", "Pull complete"):
                done = layers.get(layer)
                if done is not None:
                    layers[layer] = (done[1], done[1])
            current = sum(c for c, _ in layers.values())
            total = sum(t for _, t in layers.values())
            progress(current, total, str(event.get("status", "")))
    info = image_info(client, ref)
    if info is None:
        raise DockerError(f"pull {ref}: the image is not there after the pull")
    return info


def _split_ref(ref: str) -> tuple[str, str | None]:
    """``repo:tag`` or ``repo@digest`` into what the pull API takes."""
    if "@" in ref:
        return ref, None
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    return ref, "latest"


def remove_image(client: docker.DockerClient, ref: str) -> None:
    """Remove an image by id, or untag one tag of it."""
    with translate_docker_errors(f"remove image {ref}"):
        client.api.remove_image(ref, force=False, noprune=False)


def image_record(raw: dict[str, Any]) -> ImageRecord:
    tags = tuple(t for t in raw.get("RepoTags") or [] if t != NO_TAG)
    return ImageRecord(
        id=raw["Id"],
        tags=tags,
        created=engine_time(raw.get("Created")) or datetime.fromtimestamp(0, UTC),
        labels=raw.get("Labels") or {},
        size=int(raw.get("Size") or 0),
        shared_size=int(raw.get("SharedSize") or 0),
        parent_id=raw.get("ParentId") or "",
        digests=tuple(d for d in raw.get("RepoDigests") or [] if not d.startswith("<none>")),
    )
