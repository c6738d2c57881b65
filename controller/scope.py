"""Which hosts a request goes to, how long it waits for them, how often it asks again."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypedDict, Unpack

from shoal.protocol import Selector

from .targeting import Limit


class ScopeOptions(TypedDict, total=False):
    """A :class:`Scope`'s fields as keyword arguments of the Fleet's request methods."""

    selector: Selector | None
    limit: Limit | None
    timeout: float | None
    retries: int


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a request goes and how it is waited for; every field has a default."""

    selector: Selector | None = None
    """The hosts to target; every known host when None."""
    limit: Limit | None = None
    """At most N (or N%) of the hosts the selector matches."""
    timeout: float | None = None
    """Seconds to wait for a host's answer (its deadline moves with progress); the
    Fleet's own timeout when None."""
    retries: int = 0
    """Times to resend to hosts that stayed silent, for verbs that change nothing (a
    verb that changes something is never resent: its silent hosts are asked for the
    request's status instead)."""

    @classmethod
    def of(cls, scope: Scope | None = None, **options: Unpack[ScopeOptions]) -> Scope:
        """``scope`` (or the default scope) with the given fields replaced."""
        base = scope if scope is not None else cls()
        return replace(base, **options) if options else base
