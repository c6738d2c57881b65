"""Who this agent is: the host id it answers for and this run's instance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class Identity:
    """Shared by the parts that sign their messages with the host id (set once at start)."""

    host_id: str
    instance: str
    version: str
    started_at: datetime
