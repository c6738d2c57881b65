"""How the controller reads the heartbeats after an agent under systemd restarts into a
new venv (controller/upgrade.py ``_follow_restart``)."""

from __future__ import annotations

import asyncio

import pytest

from shoal.controller.upgrade import HostUpgrade, _follow_restart
from shoal.protocol import AgentFacts, UpgradeArgs
from tests.unit.test_selectors import make_facts

OLD = "i-old"


async def follow(*beats: AgentFacts, deadline: float = 60.0) -> HostUpgrade:
    queue: asyncio.Queue[AgentFacts] = asyncio.Queue()
    for beat in beats:
        queue.put_nowait(beat)
    outcome = HostUpgrade("pi-4", "failed", mode="process", old_version="0.1.0")
    await _follow_restart(
        outcome, UpgradeArgs(version="0.2.0", deadline=deadline), OLD, queue, lambda h, m: None
    )
    return outcome


async def test_the_new_version_after_the_old_one_leaves_is_upgraded() -> None:
    outcome = await follow(
        make_facts(instance=OLD, upgrade_failed="an earlier upgrade"),  # still installing
        make_facts(instance=OLD, status="leaving"),
        make_facts(instance="i-new", agent_version="0.2.0"),
    )
    assert (outcome.outcome, outcome.version, outcome.reason) == ("upgraded", "0.2.0", "")


async def test_the_old_version_back_with_a_reason_is_rolled_back() -> None:
    why = "upgrade to 0.2.0 rolled back: the new agent did not start"
    outcome = await follow(make_facts(instance="i-back", upgrade_failed=why))
    assert (outcome.outcome, outcome.version, outcome.reason) == ("rolled_back", "0.1.0", why)


async def test_the_old_version_back_without_a_word_is_a_failure() -> None:
    outcome = await follow(make_facts(instance="i-back"))
    assert outcome.outcome == "failed" and "came back on 0.1.0, not 0.2.0" in outcome.reason


@pytest.mark.parametrize("deadline", [0.05])
async def test_silence_past_the_deadline_is_missing(
    deadline: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shoal.controller.upgrade.FOLLOW_EXTRA", 0.05)
    outcome = await follow(make_facts(instance=OLD), deadline=deadline)
    assert outcome.outcome == "missing" and "no heartbeat" in outcome.reason
