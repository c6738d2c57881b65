"""The result of reading a compose file, and the error of a file Shoal cannot read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shoal.protocol.errors import ErrorCode
from shoal.protocol.service import RolloutConfig, ServiceSpec

from ..errors import FleetError


class ComposeError(FleetError):
    """A compose file Shoal cannot read or deploy; the message names the file and key."""

    code = ErrorCode.BAD_REQUEST


@dataclass
class ComposeProject:
    """A compose file read for deploy: services in depends_on order, rollout defaults.

    ``update_config`` and ``rollback_config`` hold an entry only for services whose
    ``deploy`` sets one. ``warnings`` name what Compose would warn about too: variables
    that were not set, sections that are ignored. ``values`` holds the secrets' and
    configs' values by ``secret:NAME`` (its repr names them only); ``tasks`` names the
    services others wait on to exit 0 (``service_completed_successfully``).
    """

    path: Path
    services: list[ServiceSpec]
    update_config: dict[str, RolloutConfig] = field(default_factory=dict)
    rollback_config: dict[str, RolloutConfig] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    project: str = ""
    values: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    tasks: set[str] = field(default_factory=set)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.services]
