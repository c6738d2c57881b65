"""Service verbs: deploy, rollback, remove, services and pull (the work is in agent.deploy)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from pydantic import BaseModel

from shoal.protocol import (
    DeployArgs,
    ErrorCode,
    PullArgs,
    RemoveArgs,
    RollbackArgs,
    ServicesArgs,
    ShoalError,
    Verb,
)

from ..context import Handler, RequestContext
from ..deploy import Deployer


def deployer(ctx: RequestContext) -> Deployer:
    """The deploy machinery, over the host's service store and locks."""
    return Deployer(ctx.host)


UNCHANGED = frozenset(
    {ErrorCode.BAD_REQUEST, ErrorCode.POLICY_DENIED, ErrorCode.CONFLICT, ErrorCode.NOT_FOUND}
)
"""Refusals that leave the services as they were: no heartbeat for them."""

Work = TypeVar("Work", bound=BaseModel)


async def _changing(
    ctx: RequestContext, args: DeployArgs | RollbackArgs | RemoveArgs, work: Awaitable[Work]
) -> Work:
    """Run ``work``, then heartbeat soon, so the reconciler and dashboards see the new
    services at once; not after a dry run or a refusal that changed nothing."""
    changed = not getattr(args, "dry_run", False)
    try:
        return await work
    except ShoalError as exc:
        changed = changed and exc.code not in UNCHANGED
        raise
    finally:
        if changed:
            ctx.host.services_changed()


async def handle_deploy(ctx: RequestContext, args: DeployArgs) -> BaseModel:
    return await _changing(ctx, args, deployer(ctx).deploy(ctx, args))


async def handle_rollback(ctx: RequestContext, args: RollbackArgs) -> BaseModel:
    return await _changing(ctx, args, deployer(ctx).rollback(ctx, args))


async def handle_remove(ctx: RequestContext, args: RemoveArgs) -> BaseModel:
    return await _changing(ctx, args, deployer(ctx).remove(ctx, args))


async def handle_services(ctx: RequestContext, args: ServicesArgs) -> BaseModel:
    return await deployer(ctx).services(args)


async def handle_pull(ctx: RequestContext, args: PullArgs) -> BaseModel:
    return await deployer(ctx).pull(ctx, args)


HANDLERS: dict[Verb, Handler] = {
    Verb.DEPLOY: handle_deploy,
    Verb.ROLLBACK: handle_rollback,
    Verb.REMOVE: handle_remove,
    Verb.SERVICES: handle_services,
    Verb.PULL: handle_pull,
}
