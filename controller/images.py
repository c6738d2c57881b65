"""Image comparison across hosts: per tag, where it is missing and where it differs.

Lives in the library so scripts get the same answer as ``shoal images --fleet``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from shoal.protocol import ImagesResult, ImageSummary

from .result import FleetResult


class ImageVariant(BaseModel):
    """One image (by digest or id) held under a tag, and the hosts that hold it."""

    model_config = ConfigDict(frozen=True)

    id: str
    hosts: list[str]


class ImageComparison(BaseModel):
    """One tag across the hosts that answered; the largest variant comes first."""

    model_config = ConfigDict(frozen=True)

    image: str
    present: list[str]
    missing: list[str]
    different: list[str]
    compared_by: Literal["digest", "id"]
    variants: list[ImageVariant]
    uniform: bool


def _identity(image: ImageSummary, repository: str, by_digest: bool) -> str:
    if by_digest:
        for digest in image.repo_digests:
            repo, _, value = digest.partition("@")
            if repo == repository:
                return value
    return image.id


def compare_images(result: FleetResult[ImagesResult]) -> list[ImageComparison]:
    """Per tag, across the hosts that answered: where it is missing, where it differs.

    Images are told apart by their registry digest when every host holding the tag
    has one for that repository (so a multi-platform image counts as one), else by
    image id.
    """
    hosts = sorted(result.replies)
    by_tag: dict[str, dict[str, ImageSummary]] = {}
    for host, reply in result.replies.items():
        for image in reply.images:
            for tag in image.repo_tags:
                by_tag.setdefault(tag, {})[host] = image
    rows = []
    for tag in sorted(by_tag):
        present = by_tag[tag]
        repository = tag.rsplit(":", 1)[0]
        by_digest = all(
            any(d.partition("@")[0] == repository for d in image.repo_digests)
            for image in present.values()
        )
        variants: dict[str, list[str]] = {}
        for host in sorted(present):
            variants.setdefault(_identity(present[host], repository, by_digest), []).append(host)
        groups = sorted(variants.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        missing = [h for h in hosts if h not in present]
        rows.append(
            ImageComparison(
                image=tag,
                present=sorted(present),
                missing=missing,
                different=sorted(h for _, group in groups[1:] for h in group),
                compared_by="digest" if by_digest else "id",
                variants=[ImageVariant(id=key, hosts=group) for key, group in groups],
                uniform=len(groups) == 1 and not missing,
            )
        )
    return rows
