"""``upgrade``: replace this agent with another version (``shoal agents upgrade``).

Only an agent in a container can do it itself: it pulls the new image, starts a helper
container (agent/docker/upgrade.py) and answers; the helper then swaps the containers
and restores the old one if the new agent does not turn healthy in time. The caller
follows the outcome by the host's heartbeats and the helper's exit code.
"""

from __future__ import annotations

from pydantic import BaseModel

from shoal.protocol import (
    BadRequest,
    Conflict,
    NotFound,
    UpgradeArgs,
    UpgradeResult,
    Verb,
)

from .. import __version__
from ..context import Handler, RequestContext
from ..docker.upgrade import own_container_id, with_version
from ..policy import check_upgrade


async def handle_upgrade(ctx: RequestContext, args: UpgradeArgs) -> BaseModel:
    own_id = own_container_id()
    if own_id is None:
        raise BadRequest(
            "this agent does not run in a container: upgrade it with its package manager"
            " (docs/operations.md, 'Upgrading agents')",
            detail={"mode": "process"},
        )
    try:
        own = await ctx.calls.run(ctx.engine.inspect_container, own_id)
    except NotFound as exc:
        raise NotFound(
            f"this agent's container {own_id[:12]} is not on the engine it serves: it cannot"
            " replace itself"
        ) from exc
    if (own.get("HostConfig") or {}).get("AutoRemove"):
        raise Conflict(
            "this agent's container was started with --rm: a stopped agent could not be"
            " restored, so it is not upgraded in place"
        )
    old_image = str((own.get("Config") or {}).get("Image") or own.get("Image") or "")
    image = args.image or with_version(old_image, args.version or "")
    check_upgrade(ctx.host.policy(), image)
    if args.pull == "always" or await ctx.calls.run(ctx.engine.image_info, image) is None:
        await ctx.progress("pulling", f"pulling {image}")
        await ctx.calls.run(
            ctx.engine.pull_image, image, lambda *_: None, timeout=ctx.calls.long_timeout
        )
    result = UpgradeResult(
        container=str(own.get("Name") or own_id).lstrip("/"),
        old_image=old_image,
        new_image=image,
        old_version=__version__,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        return result
    helper = await ctx.calls.run(
        lambda: ctx.engine.start_upgrade_helper(
            own_id, image, deadline=args.deadline, version=args.version
        )
    )
    await ctx.progress("upgrading", f"helper {helper[:12]} replaces this agent with {image}")
    return result.model_copy(update={"helper": helper})


HANDLERS: dict[Verb, Handler] = {Verb.UPGRADE: handle_upgrade}
