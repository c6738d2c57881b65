"""The handler registry: one handler per verb of the verb table, checked complete.

Each module here declares the handlers of its verbs in a ``HANDLERS`` table; the
registry merges them and refuses (at import, so at build and test time) a verb of
:data:`shoal.protocol.VERBS` without a handler, or with two.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from shoal.protocol import VERBS, ShoalError, Verb

from ..context import Handler
from . import containers, execution, host, logs, prune, secrets, services, upgrade


class RegistryError(ShoalError):
    """The handler tables do not cover the verb table exactly once."""


def build_registry(tables: Iterable[Mapping[Verb, Handler]]) -> Mapping[Verb, Handler]:
    """One handler per verb of the verb table, from the tables of the handler modules."""
    merged: dict[Verb, Handler] = {}
    for table in tables:
        for verb, handler in table.items():
            if verb in merged:
                raise RegistryError(f"two handlers for verb {verb}")
            merged[verb] = handler
    missing = sorted(str(v) for v in VERBS if v not in merged)
    if missing:
        raise RegistryError(f"no handler for verb(s) {', '.join(missing)}")
    unknown = sorted(str(v) for v in merged if v not in VERBS)
    if unknown:
        raise RegistryError(f"handler(s) for verb(s) not in the verb table: {', '.join(unknown)}")
    return MappingProxyType(merged)


HANDLERS = build_registry(
    (
        host.HANDLERS,
        containers.HANDLERS,
        execution.HANDLERS,
        logs.HANDLERS,
        prune.HANDLERS,
        secrets.HANDLERS,
        services.HANDLERS,
        upgrade.HANDLERS,
    )
)

__all__ = ["HANDLERS", "Handler", "RegistryError", "build_registry"]
