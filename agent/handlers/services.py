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


def _changed(ctx: RequestContext, args: DeployArgs | RollbackArgs | RemoveArgs) -> None:
    """Heartbeat soon, so the reconciler and dashboards see the new services at once."""
    if not getattr(args, "dry_run", False):
        ctx.host.services_changed()


async def handle_deploy(ctx: RequestContext, args: DeployArgs) -> BaseModel:
    try:
        return await deployer(ctx).deploy(ctx, args)
    finally:
        _changed(ctx, args)


async def handle_rollback(ctx: RequestContext, args: RollbackArgs) -> BaseModel:
    try:
        return await deployer(ctx).rollback(ctx, args)
    finally:
        _changed(ctx, args)


async def handle_remove(ctx: RequestContext, args: RemoveArgs) -> BaseModel:
    try:
        return await deployer(ctx).remove(ctx, args)
    finally:
        _changed(ctx, args)


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
