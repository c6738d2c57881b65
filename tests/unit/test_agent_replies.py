"""What the agent publishes for a reply: whole, in chunks, or a payload_too_large error."""

from __future__ import annotations

from shoal.agent.replies import encode_message, refusal_reply
from shoal.protocol import Busy, ErrorCode, Progress, Reply, Request, Target, utcnow
from shoal.protocol.chunks import CHUNK_HEADER, MAX_REPLY_BYTES


def reply_of(size: int) -> Reply:
    return Reply(
        id="r" * 8,
        host="h",
        ok=True,
        result={"blob": "x" * size},
        started_at=utcnow(),
        duration=0.1,
    )


def test_a_small_reply_is_one_message() -> None:
    reply = reply_of(10)
    assert encode_message(reply, "h", 1024 * 1024) == [(None, reply.model_dump_json().encode())]


def test_a_large_reply_is_chunked_and_reassembles() -> None:
    reply = reply_of(300_000)
    parts = encode_message(reply, "h", 64 * 1024)
    assert len(parts) > 1
    assert all(headers is not None and CHUNK_HEADER in headers for headers, _ in parts)
    assert b"".join(part for _, part in parts) == reply.model_dump_json().encode()


def test_a_reply_past_the_limit_becomes_payload_too_large() -> None:
    reply = reply_of(MAX_REPLY_BYTES)
    [(headers, data)] = encode_message(reply, "h", 64 * 1024)
    assert headers is None
    error = Reply.model_validate_json(data)
    assert not error.ok and error.error is not None
    assert error.error.code == ErrorCode.PAYLOAD_TOO_LARGE
    assert error.id == reply.id


def test_progress_is_never_chunked() -> None:
    progress = Progress(id="r" * 8, host="h", seq=1, phase="p", message="m")
    assert len(encode_message(progress, "h", 10)) == 1


def test_a_refusal_echoes_the_request_id() -> None:
    request = Request(verb="ps", target=Target(host="h"), sender="t")
    reply = refusal_reply(request.model_dump_json().encode(), "h", Busy("busy"), utcnow())
    assert reply.id == request.id and reply.error is not None
    assert reply.error.code == ErrorCode.BUSY
    assert refusal_reply(b"not json", "h", Busy("busy"), utcnow()).id == "unknown"
