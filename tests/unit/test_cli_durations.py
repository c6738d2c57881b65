"""Durations on the command line: rollout options take zero, prune ages do not."""

from __future__ import annotations

import pytest
import typer

from shoal.controller.cli.common import parse_duration
from shoal.controller.cli.deploy import parse_seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("0m", 0.0),
        ("45", 45.0),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1.5h", 5400.0),
    ],
)
def test_rollout_durations(text: str, seconds: float) -> None:
    assert parse_seconds(text, "--monitor") == seconds


@pytest.mark.parametrize("text", ["-1", "-1s", "soon", "5x", ""])
def test_bad_rollout_durations_are_usage_errors(text: str) -> None:
    with pytest.raises(typer.Exit) as exited:
        parse_seconds(text, "--monitor")
    assert exited.value.exit_code == 2


def test_an_age_must_be_positive() -> None:
    assert parse_duration("7d") == 7 * 86400
    with pytest.raises(ValueError):
        parse_duration("0d")
    assert parse_duration("0d", allow_zero=True) == 0
