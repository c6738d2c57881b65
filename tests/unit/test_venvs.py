"""The versioned-venv layout of an agent under systemd, and its upgrade trial (agent/venvs.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shoal.agent.cli import run_agent
from shoal.agent.errors import AgentConfigError, AgentRestart
from shoal.agent.venvs import Layout, Trial, find_layout, install, parse_env_file, require_layout
from shoal.protocol import BadRequest, UpgradeFailed


def make_root(tmp_path: Path, *names: str, current: str = "0.1.0") -> Path:
    root = tmp_path / "opt"
    for name in names or (current,):
        (root / "venvs" / name / "bin").mkdir(parents=True)
    (root / "current").symlink_to(f"venvs/{current}")
    return root


def test_the_layout_is_found_only_from_the_venv_current_links_to(tmp_path: Path) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0")
    venv = str(root / "venvs" / "0.1.0")
    layout = find_layout(venv, "/usr")
    assert layout == Layout(root.resolve(), "0.1.0")
    assert require_layout(venv, "/usr") == layout
    # Another venv than the linked one, a plain venv, no venv at all: no layout, and why.
    for prefix, base, words in (
        (str(root / "venvs" / "0.2.0"), "/usr", "is not a link to"),
        (str(tmp_path / ".venv"), "/usr", "not from a venv under"),
        ("/usr", "/usr", "not from a venv"),
    ):
        assert find_layout(prefix, base) is None
        with pytest.raises(BadRequest, match=words) as caught:
            require_layout(prefix, base)
        assert caught.value.detail == {"mode": "process"}


def test_begin_points_current_at_the_new_venv_and_commit_keeps_only_it_and_the_way_back(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path, "0.0.9", "0.1.0", "0.2.0")
    old = Layout(root, "0.1.0")
    (root / "upgrade-failed.env").write_text("SHOAL_UPGRADE_VERSION=0.0.8\n")
    trial = old.begin("0.2.0", "0.2.0", time.time() + 60)
    assert str((root / "current").readlink()) == "venvs/0.2.0"
    assert old.trial() == trial and trial.source == "0.1.0"
    assert not (root / "upgrade-failed.env").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "a staged file is left"
    new = Layout(root, "0.2.0")
    assert new.at_start() == trial
    new.commit(trial)
    assert new.trial() is None
    assert sorted(p.name for p in (root / "venvs").iterdir()) == ["0.1.0", "0.2.0"]


def test_a_trial_past_its_deadline_goes_back_and_the_old_agent_says_why(tmp_path: Path) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0")
    Layout(root, "0.1.0").begin("0.2.0", "0.2.0", time.time() + 5)
    new = Layout(root, "0.2.0")
    with pytest.raises(AgentRestart):
        new.at_start(now=time.time() + 10)
    assert str((root / "current").readlink()) == "venvs/0.1.0"
    assert new.trial() is None
    reason = Layout(root, "0.1.0").last_failure()
    assert reason is not None
    assert reason.startswith("upgrade to 0.2.0 rolled back: the new agent did not connect")


def test_a_marker_left_for_another_venv_is_cleared_and_a_bad_one_is_ignored(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0")
    (root / "upgrade.env").write_text(
        Trial("0.1.0", "0.2.0", "0.2.0", int(time.time()) + 60).render()
    )
    old = Layout(root, "0.1.0")  # current was pointed back by hand
    assert old.at_start() is None and old.trial() is None
    assert "started from 0.1.0" in (old.last_failure() or "")
    (root / "upgrade.env").write_text("SHOAL_UPGRADE_FROM=$(reboot)\nSHOAL_UPGRADE_DEADLINE=x\n")
    assert old.trial() is None and old.at_start() is None


def test_env_files_are_read_not_run() -> None:
    text = "# c\nSHOAL_UPGRADE_TO=0.2.0\nPATH=/evil\nSHOAL_UPGRADE_REASON=a b; c\n  \n"
    assert parse_env_file(text) == {"SHOAL_UPGRADE_TO": "0.2.0", "SHOAL_UPGRADE_REASON": "a b; c"}


def test_point_at_refuses_a_venv_that_is_not_there_or_not_a_plain_name(tmp_path: Path) -> None:
    layout = Layout(make_root(tmp_path), "0.1.0")
    with pytest.raises(FileNotFoundError):
        layout.point_at("0.3.0")
    with pytest.raises(ValueError, match="plain name"):
        layout.point_at("../../etc")
    assert str((layout.root / "current").readlink()) == "venvs/0.1.0"


async def test_a_failed_install_leaves_no_venv_and_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    layout = Layout(root, "0.1.0")
    with pytest.raises(UpgradeFailed, match="creating the venv"):
        await install(layout, "0.2.0", python=str(tmp_path / "no-python"))
    assert sorted(p.name for p in (root / "venvs").iterdir()) == ["0.1.0"]
    with pytest.raises(UpgradeFailed, match="already runs"):
        await install(layout, "0.1.0")


class StubAgent:
    """What run_agent uses of an Agent."""

    def __init__(self, start_takes: float) -> None:
        self.start_takes = start_takes
        self.heartbeat = SimpleNamespace(upgrade_failed="old news", published=0)
        self.stopped = False

    def request_stop(self) -> None: ...

    def reload_trust(self) -> None: ...

    async def start(self) -> None:
        await asyncio.sleep(self.start_takes)

    async def serve_forever(self) -> None:
        return None

    async def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize("start_takes", [0.0, 30.0])
async def test_an_agent_on_trial_commits_once_started_or_goes_back_at_the_deadline(
    tmp_path: Path, start_takes: float
) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0")
    Layout(root, "0.1.0").begin("0.2.0", "0.2.0", time.time() + 1)
    agent: Any = StubAgent(start_takes)
    layout = Layout(root, "0.2.0")
    if start_takes:
        with pytest.raises(AgentRestart):
            await run_agent(agent, layout)
        assert str((root / "current").readlink()) == "venvs/0.1.0"
        assert "did not connect and heartbeat in time" in (layout.last_failure() or "")
    else:
        await run_agent(agent, layout)
        assert str((root / "current").readlink()) == "venvs/0.2.0"
        assert agent.heartbeat.upgrade_failed is None
    assert layout.trial() is None and agent.stopped


def test_a_trial_whose_way_back_is_gone_ends_and_the_new_agent_stays(tmp_path: Path) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0")
    Layout(root, "0.1.0").begin("0.2.0", "0.2.0", time.time() + 5)
    (root / "venvs" / "0.1.0" / "bin").rmdir()
    new = Layout(root, "0.2.0")
    assert new.at_start(now=time.time() + 10) is None  # no restart into nothing
    assert str((root / "current").readlink()) == "venvs/0.2.0"
    assert new.trial() is None and "is gone" in (new.last_failure() or "")


def fake_agent(venv: Path, version: str, config_ok: bool) -> None:
    script = venv / "bin" / "shoal-agent"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && {{ echo "shoal-agent {version}"; exit 0; }}\n'
        f"echo 'unknown key upgrade.versions' >&2; exit {0 if config_ok else 1}\n"
    )
    script.chmod(0o755)


async def test_the_way_back_is_reused_and_never_removed_when_it_refuses_the_config(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0", current="0.2.0")
    layout = Layout(root, "0.2.0")
    fake_agent(root / "venvs" / "0.1.0", "0.1.0", config_ok=False)
    with pytest.raises(UpgradeFailed, match="unknown key"):
        await install(layout, "0.1.0", python=str(tmp_path / "no-python"))
    assert (root / "venvs" / "0.1.0" / "bin" / "shoal-agent").exists()
    fake_agent(root / "venvs" / "0.1.0", "0.1.0", config_ok=True)
    said: list[str] = []

    async def say(message: str) -> None:
        said.append(message)

    # No python to make a venv with: reusing the one there must not need it.
    target = await install(layout, "0.1.0", python=str(tmp_path / "no-python"), say=say)
    assert target == root / "venvs" / "0.1.0" and said == [f"{target} holds 0.1.0 already"]


class RefusingAgent(StubAgent):
    async def start(self) -> None:
        raise AgentConfigError("no such setting")


async def test_an_agent_on_trial_that_refuses_its_configuration_goes_back_at_once(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0")
    Layout(root, "0.1.0").begin("0.2.0", "0.2.0", time.time() + 600)
    layout = Layout(root, "0.2.0")
    agent: Any = RefusingAgent(0.0)
    with pytest.raises(AgentRestart):
        await run_agent(agent, layout)
    assert str((root / "current").readlink()) == "venvs/0.1.0"
    assert "refused its configuration: no such setting" in (layout.last_failure() or "")


class LateAgent(StubAgent):
    """Sends its first heartbeat, then is slow to finish starting."""

    async def start(self) -> None:
        self.heartbeat.published = 1
        await asyncio.sleep(30)


async def test_an_agent_on_trial_seen_heartbeating_stays_even_if_the_deadline_cuts_its_start(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path, "0.1.0", "0.2.0")
    Layout(root, "0.1.0").begin("0.2.0", "0.2.0", time.time() + 1.5)
    layout = Layout(root, "0.2.0")
    agent: Any = LateAgent(0.0)
    with pytest.raises(AgentRestart, match="just after the first heartbeat"):
        await run_agent(agent, layout)
    assert str((root / "current").readlink()) == "venvs/0.2.0"
    assert layout.trial() is None and layout.last_failure() is None
