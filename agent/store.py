"""Service records: what the state directory keeps of each service this host deploys.

Apart from :mod:`agent.deploy` so that an agent can tell whether it has services to
recover after a crash without loading the deploy machinery, which loads on first use.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from shoal.protocol import ServiceSpec

log = logging.getLogger("shoal.agent")

_RECORD_CONFIG = ConfigDict(defer_build=True)
"""Validators are built on the first record read or written, not by an idle agent."""


class Revision(BaseModel):
    """One deployed revision of a service, as the state directory keeps it."""

    model_config = _RECORD_CONFIG

    revision: int
    spec: ServiceSpec
    spec_hash: str
    image_id: str
    container_id: str
    deployed_at: datetime


class Pending(BaseModel):
    """A deploy in progress, written before it touches the engine (for crash recovery)."""

    model_config = _RECORD_CONFIG

    revision: Revision
    healthy: bool = False


class ServiceRecord(BaseModel):
    model_config = _RECORD_CONFIG

    current: Revision | None
    previous: Revision | None = None
    pending: Pending | None = None


class ServiceStore:
    """Service records as JSON files under ``<state>/services`` (in memory without one)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._memory: dict[str, ServiceRecord] = {}

    def get(self, name: str) -> ServiceRecord | None:
        if self.root is None:
            return self._memory.get(name)
        path = self.root / f"{name}.json"
        try:
            return ServiceRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.error("service record %s unreadable (%s); treating the service as new", path, exc)
            return None

    def put(self, name: str, record: ServiceRecord) -> None:
        if self.root is None:
            self._memory[name] = record
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(record.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def delete(self, name: str) -> None:
        if self.root is None:
            self._memory.pop(name, None)
        else:
            (self.root / f"{name}.json").unlink(missing_ok=True)

    def names(self) -> list[str]:
        if self.root is None:
            return sorted(self._memory)
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json"))
