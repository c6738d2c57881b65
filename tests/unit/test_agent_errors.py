"""The agent's start errors join the one exception tree and stay where callers import them."""

from __future__ import annotations

import shoal.agent
import shoal.agent.runtime
from shoal.agent.errors import AgentConfigError, AgentStartError, AgentStopped
from shoal.protocol import ShoalError


def test_start_errors_are_shoal_errors() -> None:
    for cls in (AgentStartError, AgentConfigError, AgentStopped):
        assert issubclass(cls, ShoalError)
        assert cls.__doc__ and "\n" not in cls.__doc__.strip()
    assert issubclass(AgentConfigError, AgentStartError)
    assert issubclass(AgentStopped, AgentStartError)
    assert str(AgentStartError("no trust file")) == "no trust file"


def test_start_errors_are_importable_where_they_were() -> None:
    for module in (shoal.agent, shoal.agent.runtime):
        assert module.AgentStartError is AgentStartError
        assert module.AgentConfigError is AgentConfigError
        assert module.AgentStopped is AgentStopped
