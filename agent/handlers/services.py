"""Service verbs: deploy, rollback, remove, services and pull (the work is in agent.deploy)."""

from __future__ import annotations

from pydantic import BaseModel

from shoal.protocol import (
    DeployArgs,
    PullArgs,
    RemoveArgs,
    RollbackArgs,
    ServicesArgs,
    Verb,
)

from ..context import Handler, RequestContext
from ..deploy import Deployer


def deployer(ctx: RequestContext) -> Deployer:
    """The deploy machinery, over the host's service store and locks."""
    return Deployer(ctx.host)


async def handle_deploy(ctx: RequestContext, args: DeployArgs) -> BaseModel:
    return await deployer(ctx).deploy(ctx, args)


async def handle_rollback(ctx: RequestContext, args: RollbackArgs) -> BaseModel:
    return await deployer(ctx).rollback(ctx, args)


async def handle_remove(ctx: RequestContext, args: RemoveArgs) -> BaseModel:
    return await deployer(ctx).remove(ctx, args)


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
