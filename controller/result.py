"""What a fleet-wide request returns: replies, errors and silent hosts, as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from shoal.protocol import ErrorInfo, StatusResult

R = TypeVar("R", bound=BaseModel)


class ExitCode(IntEnum):
    """Exit codes shared by every fleet command."""

    OK = 0
    HOST_ERROR = 1
    USAGE = 2
    NO_MATCH = 3
    MISSING = 4


@dataclass(slots=True)
class FleetResult(Generic[R]):
    """The outcome of one request across the targeted hosts.

    ``targeted`` is the expected set, resolved before sending. Every targeted
    host ends up in exactly one of ``replies``, ``errors`` or ``missing``.
    """

    verb: str
    request_id: str
    targeted: list[str]
    replies: dict[str, R] = field(default_factory=dict)
    errors: dict[str, ErrorInfo] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    """Hosts of ``missing`` known offline before sending (nothing was sent to them)."""
    running: list[str] = field(default_factory=list)
    """Hosts of ``missing`` that said (when asked) they were still running the request."""
    unreported: dict[str, StatusResult] = field(default_factory=dict)
    """Hosts of ``missing`` that finished the request but whose reply was lost."""
    duration: float = 0.0

    @property
    def exit_code(self) -> ExitCode:
        if not self.targeted:
            return ExitCode.NO_MATCH
        if self.missing:
            return ExitCode.MISSING
        if self.errors:
            return ExitCode.HOST_ERROR
        return ExitCode.OK

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        """The document ``--json`` prints: stable keys for scripts."""
        return {
            "verb": self.verb,
            "request_id": self.request_id,
            "targeted": list(self.targeted),
            "replies": {h: r.model_dump(mode="json") for h, r in sorted(self.replies.items())},
            "errors": {
                h: {"code": str(e.code), "message": e.message, "detail": e.detail}
                for h, e in sorted(self.errors.items())
            },
            "missing": list(self.missing),
            "offline": list(self.offline),
            "running": list(self.running),
            "unreported": {
                h: st.model_dump(mode="json") for h, st in sorted(self.unreported.items())
            },
            "duration": round(self.duration, 4),
            "exit_code": int(self.exit_code),
        }
