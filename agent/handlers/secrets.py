"""Secret verbs: ``secret`` (store or delete one on this host) and ``secrets`` (their names)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from shoal.protocol import BadRequest, SecretArgs, SecretResult, SecretsArgs, SecretsResult, Verb

from ..context import Handler, RequestContext


async def handle_secret(ctx: RequestContext, args: SecretArgs) -> BaseModel:
    files = ctx.host.files
    if args.action == "rm":
        changed = await asyncio.to_thread(files.remove_secret, args.name)
        return SecretResult(name=args.name, action="rm", changed=changed)
    sealed = args.sealed.get(ctx.host_id)
    if sealed is None:
        raise BadRequest(f"the request carries no value of {args.name!r} for this host")
    changed = await asyncio.to_thread(files.set_secret, args.name, sealed)
    return SecretResult(name=args.name, action="set", changed=changed)


async def handle_secrets(ctx: RequestContext, args: SecretsArgs) -> BaseModel:
    return SecretsResult(secrets=await asyncio.to_thread(ctx.host.files.secret_names))


HANDLERS: dict[Verb, Handler] = {
    Verb.SECRET: handle_secret,
    Verb.SECRETS: handle_secrets,
}
