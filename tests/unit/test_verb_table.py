"""Every verb of the verb table is served, governed, described and reachable.

Adding a verb touches several places; this test names any the new verb is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import pytest
import typer

from shoal.agent.handlers import HANDLERS, RegistryError, build_registry
from shoal.agent.handlers import host as host_handlers
from shoal.controller.cli import app
from shoal.protocol import VERBS, Role, Verb
from shoal.protocol.schema import protocol_schema

ROOT = Path(__file__).resolve().parents[2]

NO_CLI_COMMAND = {
    Verb.PING: "`shoal agents` discovers and lists hosts with it",
    Verb.STATUS: "asked by scripts and clients for the outcome of an earlier request",
    Verb.CANCEL: "sent by `shoal logs --follow` when it stops following",
    Verb.REMOVE: "sent by a multi-host rollout undoing the services it created",
    Verb.SECRETS: "listed by `shoal secret ls` (the `secret` command group)",
    Verb.UPGRADE: "sent by `shoal agents upgrade` (the `agents` command group)",
}
"""Verbs without a CLI command of their own, and why."""

NAME_USED_OTHERWISE = {Verb.STATUS: "`shoal status` shows desired-state convergence"}
"""Verbs without a command whose name a command of another meaning has."""


def cli_commands() -> set[str]:
    command: Any = typer.main.get_command(app)  # the CLI's own lazily loading group
    return set(command.list_commands(click.Context(command)))


@pytest.mark.parametrize("verb", list(Verb))
def test_every_verb_has_a_handler_a_role_and_a_schema(verb: Verb) -> None:
    assert verb in VERBS
    assert callable(HANDLERS[verb])
    assert isinstance(VERBS[verb].role, Role)
    entry = protocol_schema()["verbs"][str(verb)]
    assert entry["role"] == str(VERBS[verb].role)
    assert entry["args"] and entry["result"]


@pytest.mark.parametrize("verb", list(Verb))
def test_every_verb_has_a_cli_command_or_a_reason_for_none(verb: Verb) -> None:
    if verb in NO_CLI_COMMAND:
        if verb not in NAME_USED_OTHERWISE:
            assert str(verb) not in cli_commands(), f"{verb} has a command now: drop its reason"
    else:
        assert str(verb) in cli_commands()


@pytest.mark.parametrize("verb", list(Verb))
def test_every_verb_has_a_section_in_the_protocol_doc(verb: Verb) -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    headings = [line for line in doc.splitlines() if line.startswith("#")]
    assert any(re.search(rf"`{verb}`", h) for h in headings), f"no section for `{verb}`"


def test_the_registry_refuses_a_missing_or_a_doubled_handler() -> None:
    with pytest.raises(RegistryError, match="no handler for verb"):
        build_registry([host_handlers.HANDLERS])
    with pytest.raises(RegistryError, match="two handlers"):
        build_registry([host_handlers.HANDLERS, host_handlers.HANDLERS])
