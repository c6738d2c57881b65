"""``upgrade``: replace this agent with another version (``shoal agents upgrade``).

An agent in a container pulls the new image, starts a helper container
(agent/docker/upgrade.py) and answers; the helper then swaps the containers and restores
the old one if the new agent does not turn healthy in time. The caller follows the
outcome by the host's heartbeats and the helper's exit code.

An agent under a service manager, installed as one venv per version (agent/venvs.py),
installs the new version beside itself, checks it, answers, points ``current`` at it
and exits 75 for the service manager to start the new one; the new agent commits once
it heartbeats, or the old one is put back after the deadline. The caller follows the
outcome by the heartbeats: the new version, or the old one with ``upgrade_failed``.
"""

from __future__ import annotations

import asyncio
import sys
import time

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
from ..policy import check_upgrade, check_upgrade_version
from ..venvs import install, require_layout

_installing = asyncio.Lock()
"""One upgrade at a time on a host."""


async def handle_upgrade(ctx: RequestContext, args: UpgradeArgs) -> BaseModel:
    own_id = own_container_id()
    if own_id is None:
        return await _upgrade_venv(ctx, args)
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
        instance=ctx.host.instance,
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


async def _upgrade_venv(ctx: RequestContext, args: UpgradeArgs) -> BaseModel:
    """Install the new version beside this one, check it, then restart into it."""
    layout = require_layout()
    if args.image is not None:
        raise BadRequest(
            "this agent runs under a service manager, not in a container: upgrade it to a"
            " version (--version), not to an image",
            detail={"mode": "process"},
        )
    version = args.version or ""
    if version == __version__:
        raise Conflict(f"this agent already runs {version}")
    check_upgrade_version(ctx.host.policy(), version)
    trial = layout.trial()
    if trial is not None or _installing.locked():
        raise Conflict(
            "an upgrade of this agent is already under way"
            + (f" (to {trial.version}, until it heartbeats or times out)" if trial else "")
        )
    result = UpgradeResult(
        mode="process",
        venv=str(layout.venv(version)),
        old_venv=str(layout.venv(layout.running)),
        old_version=__version__,
        instance=ctx.host.instance,
        dry_run=args.dry_run,
    )
    if args.dry_run:
        return result
    async with _installing:

        async def say(message: str) -> None:
            await ctx.progress("installing", message)

        async with ctx.keepalive("installing", f"installing shoal {version}"):
            target = await install(layout, version, agent_args=sys.argv[1:], say=say)
        layout.begin(target.name, version, time.time() + args.deadline)
    ctx.host.restart(f"upgrading to {version} ({target})")
    return result


HANDLERS: dict[Verb, Handler] = {Verb.UPGRADE: handle_upgrade}
