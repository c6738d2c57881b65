"""Why an agent cannot start: errors of the agent's own lifecycle."""

from __future__ import annotations

from shoal.protocol import ShoalError


class AgentStartError(ShoalError):
    """The agent cannot start (bad configuration, host id already in use, …)."""


class AgentConfigError(AgentStartError):
    """The agent's configuration is incomplete or contradictory (a usage error)."""


class AgentStopped(AgentStartError):
    """The agent was asked to stop before it had started."""


class AgentRestart(ShoalError):
    """The agent exits 75 (``RESTART_EXIT``) for its service manager to start it again."""


__all__ = ["AgentConfigError", "AgentRestart", "AgentStartError", "AgentStopped"]
