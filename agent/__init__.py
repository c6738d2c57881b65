"""The Shoal agent: one per host, executing Docker operations requested over NATS."""

from agent.config import AgentSettings
from agent.engine import Engine, EngineInfo
from agent.runtime import Agent, AgentStartError

__all__ = ["Agent", "AgentSettings", "AgentStartError", "Engine", "EngineInfo"]
__version__ = "0.1.0"
