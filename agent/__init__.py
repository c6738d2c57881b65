"""The Shoal agent: one per host, executing Docker operations requested over NATS.

``Agent`` loads the runtime (and the Docker SDK) on first use, so importing a light
module such as ``agent.trust`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import AgentSettings
from .engine import Engine, EngineInfo
from .errors import AgentConfigError, AgentStartError, AgentStopped

if TYPE_CHECKING:
    from .runtime import Agent

__all__ = [
    "Agent",
    "AgentConfigError",
    "AgentSettings",
    "AgentStartError",
    "AgentStopped",
    "Engine",
    "EngineInfo",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from .runtime import Agent

        return Agent
    raise AttributeError(f"module 'agent' has no attribute {name!r}")
