"""Every timestamp on the wire in one RFC 3339 form: UTC with ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from shoal.protocol import LogLine, Reply
from shoal.protocol.envelope import wire_time
from shoal.protocol.verbs import decode_log_lines, encode_log_lines


def test_wire_time_is_the_form_replies_write() -> None:
    at = datetime(2026, 12, 6, 12, 30, 5, 250000, tzinfo=UTC)
    assert wire_time(at) == "2026-12-06T12:30:05.250000Z"
    reply = Reply(id="r" * 8, host="h", ok=True, started_at=at, duration=0.0)
    assert reply.model_dump(mode="json")["started_at"] == wire_time(at)


def test_wire_time_writes_other_zones_in_utc() -> None:
    at = datetime(2026, 12, 6, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert wire_time(at) == "2026-12-06T12:00:00Z"
    assert datetime.fromisoformat(wire_time(at)) == at


def test_followed_log_lines_carry_wire_times() -> None:
    at = datetime(2026, 12, 6, 12, 0, 0, 123456, tzinfo=UTC)
    [message] = encode_log_lines([LogLine(time=at, text="hello"), LogLine(text="no time")])
    assert message.splitlines() == [f"{wire_time(at)} hello", "- no time"]
    assert decode_log_lines(message) == [LogLine(time=at, text="hello"), LogLine(text="no time")]
