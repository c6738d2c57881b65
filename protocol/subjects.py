"""The one place where subject strings are built."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .hostid import validate_host_id

DEFAULT_PREFIX = "shoal"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_VERB_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _token(verb: str) -> str:
    if not _VERB_RE.fullmatch(verb):
        raise ValueError(f"invalid verb token {verb!r}")
    return verb


@dataclass(frozen=True, slots=True)
class Subjects:
    """Builds every subject Shoal uses under one prefix (default ``shoal``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"invalid subject prefix {self.prefix!r}")

    def host(self, host_id: str, verb: str) -> str:
        """Direct request to one host."""
        return f"{self.prefix}.host.{validate_host_id(host_id)}.{_token(verb)}"

    def host_all_verbs(self, host_id: str) -> str:
        """Wildcard an agent subscribes to for its direct requests."""
        return f"{self.prefix}.host.{validate_host_id(host_id)}.*"

    def broadcast(self, verb: str) -> str:
        """Broadcast request to every agent; the selector travels in the request."""
        return f"{self.prefix}.all.{_token(verb)}"

    def broadcast_all_verbs(self) -> str:
        return f"{self.prefix}.all.*"

    def heartbeat(self, host_id: str) -> str:
        return f"{self.prefix}.hb.{validate_host_id(host_id)}"

    def heartbeat_all(self) -> str:
        return f"{self.prefix}.hb.>"

    def event(self, host_id: str, kind: str) -> str:
        return f"{self.prefix}.events.{validate_host_id(host_id)}.{_token(kind)}"

    def events_all(self) -> str:
        return f"{self.prefix}.events.>"

    def audit(self, host_id: str) -> str:
        return f"{self.prefix}.audit.{validate_host_id(host_id)}"

    def agent_inbox_prefix(self, host_id: str) -> str:
        """An agent's own inbox prefix, so its NATS permissions need no ``_INBOX.>``."""
        return f"_SHOAL_AGENT.{self.prefix}.{validate_host_id(host_id)}"

    def verb_of(self, subject: str) -> str:
        """The verb token of a request subject (its last token)."""
        return subject.rsplit(".", 1)[-1]

    def host_of_heartbeat(self, subject: str) -> str:
        """The host id of a heartbeat subject."""
        head = f"{self.prefix}.hb."
        if not subject.startswith(head):
            raise ValueError(f"not a heartbeat subject: {subject!r}")
        return validate_host_id(subject[len(head) :])
