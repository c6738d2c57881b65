"""What ``shoal`` loads to start, and the plain message path that keeps Rich out of it.

A command's module loads when that command runs (``controller.cli.LAZY_COMMANDS``), the
rollout engine when a rollout starts, and Rich when a message goes to a terminal or a
table is drawn on one. These tests run the command in a fresh interpreter and look at
what it imported.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from shoal.controller.cli import LAZY_COMMANDS, app, common
from shoal.controller.cli.common import EXIT_NATS_UNREACHABLE, Stream, print_json, print_rows, run
from shoal.controller.errors import ConnectError

ROOT = Path(__file__).resolve().parents[2]

HEAVY = (
    "rich",
    "shoal.controller.rollout",
    "shoal.controller.compose",
    "shoal.controller.cli.deploy",
    "shoal.controller.cli.observe",
    "shoal.controller.cli.logs",
    "shoal.controller.cli.containers",
    "shoal.controller.cli.shared",
    "shoal.controller.cli.disk",
    "shoal.controller.embedded",
    "shoal.agent",
    "docker",
    "yaml",
)


def loaded_after(argv: list[str], tmp_path: Path) -> tuple[int, str, list[str]]:
    """Run ``shoal argv`` in a fresh interpreter; its exit code, stderr and heavy modules."""
    code = (
        "import json, sys\n"
        f"sys.argv = ['shoal', *{argv!r}]\n"
        "from shoal.controller.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "else:\n"
        "    code = 0\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps([code, heavy]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "COLUMNS": "200",
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "XDG_STATE_HOME": str(tmp_path / "state"),
        },
    )
    exit_code, heavy = json.loads(result.stdout.splitlines()[-1])
    return exit_code, result.stderr, heavy


@pytest.mark.parametrize("extra", [["--json"], []])
def test_ps_to_a_pipe_loads_neither_rich_nor_other_commands(
    tmp_path: Path, extra: list[str]
) -> None:
    code, stderr, heavy = loaded_after(["--server", "nats://127.0.0.1:1", "ps", *extra], tmp_path)
    assert code == 5, stderr
    assert stderr.startswith("error: cannot reach NATS at nats://127.0.0.1:1"), stderr
    assert heavy == []


def test_deploy_loads_what_it_needs(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yml"
    compose.write_text("services:\n  web:\n    image: busybox:1.36\n")
    code, stderr, heavy = loaded_after(
        ["--server", "nats://127.0.0.1:1", "deploy", "-f", str(compose)], tmp_path
    )
    assert code == 5, stderr
    assert {"shoal.controller.cli.deploy", "shoal.controller.compose"} <= set(heavy)
    assert "shoal.agent" not in heavy and "docker" not in heavy


def test_help_lists_every_command_in_its_panel() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in [*LAZY_COMMANDS, "init", "schema"]:
        assert f" {name} " in result.output, name
    for panel in ("Fleet", "Containers", "Disk", "Deploy", "Set-up", "Security"):
        assert f" {panel} " in result.output


def test_subcommand_groups_and_typos_still_work() -> None:
    result = CliRunner().invoke(app, ["agents", "forget", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Forget an offline host" in result.output
    typo = CliRunner().invoke(app, ["imgaes"], env={"COLUMNS": "200"})
    assert typo.exit_code == 2
    assert "Did you mean 'images'?" in typo.output


def test_every_lazy_command_loads() -> None:
    group = typer.main.get_command(app)
    for name, lazy in LAZY_COMMANDS.items():
        command = group.commands[name]  # type: ignore[attr-defined]
        assert command.name == name
        assert command.rich_help_panel == lazy.panel
        assert hasattr(command, "commands") == lazy.group


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_say_to_a_pipe_writes_plain_text_without_reading_markup() -> None:
    stream = Stream(stderr=True)
    stream.file = io.StringIO()
    stream.say(("error", "red"), " web-1: docker_error: bad [/foo] tag [bold]x")
    assert stream.file.getvalue() == "error web-1: docker_error: bad [/foo] tag [bold]x\n"


def test_say_on_a_terminal_colors_the_parts_and_keeps_brackets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = Stream(stderr=True)
    stream.file = Tty()
    stream.say(("error", "red"), " web-1: bad [/foo] tag")
    written = stream.file.getvalue()
    assert "\x1b[31merror\x1b[0m" in written
    assert " web-1: bad [/foo] tag" in written


class Unknown:
    def __str__(self) -> str:
        return "shown as str"


def test_print_json_writes_indented_utf8_and_str_for_unknown_values(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    print_json({"host": "hôte-1", "n": 3, "items": [1, 2], "other": Unknown()})
    written = capsysbinary.readouterr().out
    assert written.endswith(b"}\n")
    assert json.loads(written) == {
        "host": "hôte-1",
        "n": 3,
        "items": [1, 2],
        "other": "shown as str",
    }
    assert written.startswith(b'{\n  "host": "h\xc3\xb4te-1",\n  "n": 3,\n  "items": [\n    1,')


def test_run_returns_the_coroutines_result_and_maps_errors() -> None:
    async def answer() -> list[int]:
        return [1, 2, 3]

    assert run(answer()) == [1, 2, 3]

    async def unreachable() -> None:
        raise ConnectError("cannot reach NATS at nats://127.0.0.1:1")

    with pytest.raises(typer.Exit) as exc:
        run(unreachable())
    assert exc.value.exit_code == EXIT_NATS_UNREACHABLE


def test_print_rows_to_a_pipe_is_plain_and_aligned(capsys: pytest.CaptureFixture[str]) -> None:
    print_rows(
        ("HOST", "STATE", "AGENT"),
        [
            ["web-1", ("online", "green"), ["0.1.0", (" INSECURE", "bold red")]],
            ["db-10", ("offline", "red"), "0.1.0"],
        ],
    )
    assert capsys.readouterr().out.splitlines() == [
        "HOST   STATE    AGENT",
        "web-1  online   0.1.0 INSECURE",
        "db-10  offline  0.1.0",
    ]


def test_print_rows_on_a_terminal_shows_styles_and_never_reads_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(common, "out", Stream(stderr=False))
    common.out.file = Tty()
    print_rows(("NAME", "COMMAND"), [[("web", "green"), 'sh -c "echo [/x] [bold]"']])
    written = common.out.file.getvalue()
    assert "\x1b[32mweb\x1b[0m" in written
    assert 'sh -c "echo [/x] [bold]"' in written


def test_rich_tables_of_the_cli_never_read_cell_text_as_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.table import Table

    monkeypatch.setenv("FORCE_COLOR", "1")
    stream = Stream(stderr=False)
    stream.file = Tty()
    table = Table()
    table.add_column("REASON")
    table.add_row("bad [/x] tag from a host")
    stream.print(table)
    assert "bad [/x] tag from a host" in stream.file.getvalue()
