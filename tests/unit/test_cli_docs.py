"""docs/cli.md is generated from the CLI's own help, and this test keeps it in step.

After changing a command, an option or a help text, regenerate it with

    python -m tests.unit.test_cli_docs

The generator reads the commands' own metadata (names, arguments, options, help texts,
defaults, environment variables), the same that ``--help`` shows.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer.main
from rich.text import Text

from shoal.agent.cli import app as agent_app
from shoal.controller.cli import app as shoal_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REGENERATE = "python -m tests.unit.test_cli_docs"

HEADER = f"""# Command reference

This page is generated from the commands' own help: do not edit it, run
`{REGENERATE}` instead (a test fails when the page and the help differ).
`shoal COMMAND --help` shows the same on a terminal.

Every fleet command takes the same targeting (`-H`, `-l`, `--limit`), `--server`,
`--timeout` and `--json`, and exits with the same codes: 0 every targeted host answered
ok, 1 a host answered with an error, 2 usage error, 3 no host matched, 4 a targeted host
did not answer (wins over 1), 5 NATS could not be reached.
"""


def plain(text: str | None) -> str:
    """Help text as the terminal shows it: Rich markup applied, escapes removed."""
    if not text:
        return ""
    return Text.from_markup(text.strip()).plain


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(param: Any) -> str:
    show = getattr(param, "show_default", None)
    if show is False or getattr(param, "is_flag", False) or getattr(param, "multiple", False):
        return ""
    if isinstance(show, str):
        return show
    default = param.default
    if default is None or callable(default) or default == "":
        return ""
    if isinstance(default, Enum):
        default = default.value
    return str(default)


def _value_name(param: Any) -> str:
    metavar = getattr(param, "metavar", None)
    if metavar:
        return str(metavar)
    return str(param.name).upper()


def _param_row(param: Any) -> str | None:
    if getattr(param, "hidden", False):
        return None
    help_text = plain(getattr(param, "help", ""))
    if param.param_type_name == "argument":
        name = f"`{_value_name(param)}`"
        kind = "argument" + ("" if param.required else ", optional")
    else:
        names = [*param.opts, *param.secondary_opts]
        flag = getattr(param, "is_flag", False)
        name = ", ".join(f"`{n}`" for n in sorted(names, key=lambda n: (n.startswith("--"), n)))
        if not flag:
            name += f" {_value_name(param)}"
        kind = "flag" if flag else "option"
        if getattr(param, "multiple", False):
            kind += ", repeatable"
    extras = []
    default = _default(param)
    if default:
        extras.append(f"default: `{default}`")
    envvar = getattr(param, "envvar", None)
    if envvar:
        names = [envvar] if isinstance(envvar, str) else list(envvar)
        extras.append("env: " + ", ".join(f"`{e}`" for e in names))
    detail = help_text + (f" ({'; '.join(extras)})" if extras else "")
    return f"| {_cell(name)} | {kind} | {_cell(detail)} |"


def _usage(path: list[str], command: Any) -> str:
    pieces = [*path]
    if any(p.param_type_name == "option" and not p.hidden for p in command.params):
        pieces.append("[OPTIONS]")
    for param in command.params:
        if param.param_type_name == "argument":
            value = _value_name(param)
            if param.nargs == -1 or getattr(param, "multiple", False):
                value += "..."
            pieces.append(value if param.required else f"[{value}]")
    if hasattr(command, "commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _section(path: list[str], command: Any, level: int) -> list[str]:
    lines = [f"{'#' * level} `{' '.join(path)}`", ""]
    help_text = plain(command.help)
    if help_text:
        lines += [help_text, ""]
    lines += ["```", _usage(path, command), "```", ""]
    rows = [row for p in command.params if (row := _param_row(p)) is not None]
    if rows:
        lines += ["| name | kind | description |", "|---|---|---|", *rows, ""]
    return lines


def _commands(group: Any) -> list[tuple[str, Any]]:
    return [(n, c) for n, c in group.commands.items() if not getattr(c, "hidden", False)]


def _walk(path: list[str], command: Any, level: int) -> list[str]:
    lines = _section(path, command, level)
    if hasattr(command, "commands"):
        for name, sub in _commands(command):
            lines += _walk([*path, name], sub, min(level + 1, 4))
    return lines


def cli_reference() -> str:
    shoal = typer.main.get_command(shoal_app)
    lines = [HEADER, "## `shoal`", "", plain(shoal.help), ""]
    lines += ["```", _usage(["shoal"], shoal), "```", ""]
    lines += ["Options given before the command:", ""]
    rows = [row for p in shoal.params if (row := _param_row(p)) is not None]
    lines += ["| name | kind | description |", "|---|---|---|", *rows, ""]
    panels: dict[str, list[tuple[str, Any]]] = {}
    for name, command in _commands(shoal):
        panels.setdefault(getattr(command, "rich_help_panel", None) or "Other", []).append(
            (name, command)
        )
    for panel, commands in panels.items():
        lines += [f"## {panel}", ""]
        for name, command in commands:
            lines += _walk(["shoal", name], command, 3)
    agent = typer.main.get_command(agent_app)
    lines += ["## The agent", ""]
    lines += _section(["shoal-agent"], agent, 3)
    return "\n".join(lines).rstrip("\n") + "\n"


def test_cli_reference_is_up_to_date() -> None:
    expected = cli_reference()
    current = DOC.read_text() if DOC.exists() else ""
    assert current == expected, f"docs/cli.md is out of step with the CLI: run {REGENERATE}"


def test_cli_reference_covers_every_command() -> None:
    text = cli_reference()
    for name, command in _commands(typer.main.get_command(shoal_app)):
        assert f"### `shoal {name}`" in text
        for sub, _ in _commands(command) if hasattr(command, "commands") else []:
            assert f"#### `shoal {name} {sub}`" in text
    assert "`--metrics-port`" in text and "`SHOAL_METRICS_PORT`" in text


def test_the_generator_sees_a_changed_help_text() -> None:
    # get_command builds new command objects on every call: changing one changes nothing else.
    command = typer.main.get_command(shoal_app).commands["logs"]  # type: ignore[attr-defined]
    before = _section(["shoal", "logs"], command, 3)
    command.help = "Something else."
    assert _section(["shoal", "logs"], command, 3) != before


if __name__ == "__main__":
    DOC.write_text(cli_reference())
    sys.stdout.write(f"wrote {DOC}\n")
