"""agent.journal: the request journal kept open between appends."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shoal.agent.journal import JournalEntry, RequestJournal

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def entry(request_id: str, *, expires_in: float = 60.0) -> JournalEntry:
    return JournalEntry(
        id=request_id,
        verb="ps",
        expires=NOW + timedelta(seconds=expires_in),
        state="running",
        started_at=NOW,
    )


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_line_is_in_the_file_as_soon_as_it_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    journal = RequestJournal(path)
    journal.load(NOW)
    journal.start(entry("a" * 8), durable=False)
    # Read by another handle while the journal's stays open: nothing is held back.
    assert [(d["id"], d["state"]) for d in lines(path)] == [("a" * 8, "running")]
    journal.start(entry("b" * 8), durable=True)
    journal.finish("a" * 8, NOW, ok=True, code=None, message=None)
    assert [(d["id"], d["state"]) for d in lines(path)] == [
        ("a" * 8, "running"),
        ("b" * 8, "running"),
        ("a" * 8, "finished"),
    ]
    journal.close()
    journal.close()  # idempotent


def test_appends_after_a_compaction_go_to_the_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    journal = RequestJournal(path)
    journal.load(NOW)
    journal.start(entry("old00000", expires_in=-1), durable=False)
    journal.start(entry("kept0000"), durable=False)
    journal.compact(NOW)
    journal.start(entry("new00000"), durable=False)
    assert [d["id"] for d in lines(path)] == ["kept0000", "new00000"]
    assert not path.with_suffix(".tmp").exists()


def test_after_a_close_an_append_reopens_and_a_reload_sees_every_entry(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    journal = RequestJournal(path)
    journal.load(NOW)
    journal.start(entry("first000"), durable=True)
    journal.close()
    journal.start(entry("second00"), durable=False)  # e.g. a request ending during stop
    journal.close()
    again = RequestJournal(path)
    again.load(NOW)
    assert {e.id: e.state for e in (again.get("first000"), again.get("second00")) if e} == {
        "first000": "interrupted",
        "second00": "interrupted",
    }
    again.close()
