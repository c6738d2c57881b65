"""The envelope: Request, Progress, Reply, ErrorInfo and decode_request (protocol/envelope.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shoal.protocol import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    BadRequest,
    ErrorCode,
    ErrorInfo,
    NotFound,
    PayloadTooLarge,
    Progress,
    Reply,
    Request,
    Selector,
    ShoalError,
    Target,
    UnsupportedVersion,
    decode_request,
    error_reply,
    new_request_id,
    request_head,
)
from shoal.protocol.signing import Signature

FAST = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def good_request(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "kind": "request",
        "id": "0123456789abcdef",
        "verb": "ps",
        "args": {"all": True},
        "sender": "alice@laptop",
        "issued_at": "2024-05-01T12:00:00Z",
        "ttl": 30,
        "target": {"host": "pi-4"},
    }
    data.update(overrides)
    return data


def raw(data: Any) -> bytes:
    return json.dumps(data).encode()


def assert_rejected(data: bytes, exc_type: type[ShoalError] = BadRequest) -> ShoalError:
    with pytest.raises(ShoalError) as info:
        decode_request(data)
    assert type(info.value) is exc_type, info.value
    assert info.value.message
    assert_reply_serializable(info.value)
    return info.value


def assert_reply_serializable(exc: ShoalError) -> None:
    """The error must travel back to the controller in a reply."""
    json.dumps(exc.detail)
    reply = error_reply("0123456789abcdef", "pi-4", exc, started_at=T0)
    back = Reply.model_validate_json(reply.model_dump_json())
    assert back.error is not None
    assert back.error.code is exc.code
    assert back.error.message == exc.message


# --- round trips -------------------------------------------------------------------


def test_request_defaults() -> None:
    r = Request(verb="ping", target=Target(host="pi-4"))
    assert r.v == PROTOCOL_VERSION
    assert r.kind == "request"
    assert len(r.id) == 32
    assert r.issued_at.tzinfo is not None
    assert r.expires_at == r.issued_at + timedelta(seconds=r.ttl)
    assert r.sig is None


def test_new_request_ids_are_unique_and_valid() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for rid in list(ids)[:10]:
        Request(id=rid, verb="ping", target=Target(host="a"))


@pytest.mark.parametrize(
    "target",
    [
        Target(host="pi-4"),
        Target(selector=Selector()),
        Target(selector=Selector.build(hosts=["pi-*"], labels=["role=web,arch in (arm64,arm)"])),
    ],
)
def test_request_round_trip(target: Target) -> None:
    r = Request(
        verb="ps",
        args={"all": True, "name": ["web"], "nested": {"a": [1, 2.5, None, "x"]}},
        sender="ci",
        issued_at=T0,
        ttl=12.5,
        target=target,
        sig=Signature(key="UAKEY", value="c2ln"),
    )
    data = r.model_dump_json().encode()
    assert decode_request(data) == r
    assert Request.model_validate_json(data) == r


def test_non_utc_issued_at_keeps_the_instant() -> None:
    tz = timezone(timedelta(hours=2))
    r = Request(verb="ping", target=Target(host="a"), issued_at=T0.astimezone(tz))
    back = decode_request(r.model_dump_json().encode())
    assert back.issued_at == T0


def test_progress_round_trip() -> None:
    p = Progress(id="0123456789abcdef", host="pi-4", seq=3, phase="pull", message="layer 2")
    assert Progress.model_validate_json(p.model_dump_json()) == p
    p2 = Progress(id="0123456789abcdef", host="pi-4", seq=0, phase="pull", current=10.0, total=20.0)
    assert Progress.model_validate_json(p2.model_dump_json()) == p2
    assert p2.kind == "progress"


def test_reply_round_trip() -> None:
    ok = Reply(
        id="0123456789abcdef",
        host="pi-4",
        ok=True,
        result={"containers": []},
        started_at=T0,
        duration=0.25,
    )
    assert Reply.model_validate_json(ok.model_dump_json()) == ok
    failed = error_reply(
        "0123456789abcdef",
        "pi-4",
        NotFound("no such container", detail={"name": "x"}),
        started_at=T0,
        duration=1.0,
    )
    back = Reply.model_validate_json(failed.model_dump_json())
    assert back == failed
    assert back.ok is False
    assert back.error is not None
    assert back.error.code is ErrorCode.NOT_FOUND
    assert back.error.message == "no such container"
    assert back.error.detail == {"name": "x"}


def test_reply_and_progress_ignore_unknown_fields_from_newer_peers() -> None:
    reply = json.loads(
        Reply(id="x", host="h", ok=True, started_at=T0, duration=0).model_dump_json()
    )
    reply["new_field"] = {"anything": 1}
    assert Reply.model_validate_json(json.dumps(reply)).ok is True
    progress = {"id": "0123456789abcdef", "host": "h", "seq": 0, "phase": "p", "eta": 3}
    assert Progress.model_validate(progress).seq == 0


# --- Target and Reply invariants ---------------------------------------------------------


def test_target_needs_exactly_one_of_host_or_selector() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Target()
    with pytest.raises(ValidationError, match="exactly one"):
        Target(host="a", selector=Selector())
    assert Target(host="a").matches("a", {})
    assert not Target(host="a").matches("b", {})
    t = Target(selector=Selector.build(labels=["role=web"]))
    assert t.matches("any", {"role": "web"})
    assert not t.matches("any", {"role": "db"})


def test_reply_ok_with_error_rejected() -> None:
    with pytest.raises(ValidationError, match="carries no error"):
        Reply(
            id="x",
            host="h",
            ok=True,
            error=ErrorInfo(code="internal", message="m"),
            started_at=T0,
            duration=0,
        )


def test_reply_failed_without_error_rejected() -> None:
    with pytest.raises(ValidationError, match="carries an error"):
        Reply(id="x", host="h", ok=False, started_at=T0, duration=0)


@pytest.mark.parametrize(
    "change",
    [
        {"host": "a.b"},
        {"host": ">"},
        {"duration": -1},
        {"started_at": "2024-05-01T12:00:00"},
        {"kind": "request"},
    ],
)
def test_reply_field_validation(change: dict[str, Any]) -> None:
    data = {"id": "x", "host": "h", "ok": True, "started_at": "2024-05-01T12:00:00Z", "duration": 0}
    data.update(change)
    with pytest.raises(ValidationError):
        Reply.model_validate_json(json.dumps(data))


# --- ErrorInfo -----------------------------------------------------------------------------


def test_error_info_keeps_unknown_codes() -> None:
    info = ErrorInfo.model_validate_json('{"code":"brand_new","message":"x"}')
    assert info.code == "brand_new"
    assert not isinstance(info.code, ErrorCode)
    assert info.detail == {}
    assert json.loads(info.model_dump_json())["code"] == "brand_new"


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_info_known_codes_become_members(code: ErrorCode) -> None:
    from_json = ErrorInfo.model_validate_json(json.dumps({"code": str(code), "message": "m"}))
    from_python = ErrorInfo.model_validate({"code": str(code), "message": "m"})
    for info in (from_json, from_python):
        assert isinstance(info.code, ErrorCode)
        assert info.code is code


def test_error_info_ignores_unknown_fields_and_requires_message() -> None:
    info = ErrorInfo.model_validate({"code": "timeout", "message": "m", "hint": "later"})
    assert info.code is ErrorCode.TIMEOUT
    with pytest.raises(ValidationError):
        ErrorInfo.model_validate({"code": "timeout"})


# --- decode_request: typed errors only ------------------------------------------------------


def test_decode_good_request() -> None:
    r = decode_request(raw(good_request()))
    assert r.id == "0123456789abcdef"
    assert r.verb == "ps"
    assert r.args == {"all": True}
    assert r.target.host == "pi-4"
    assert r.issued_at == T0
    assert r.ttl == 30.0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe",
        b"not json",
        b"{",
        b'{"verb": "ps",}',
        b"[]",
        b"[1, 2]",
        b'"a string"',
        b"42",
        b"null",
        b"true",
        b"{}",
        '{"verb": "p\u00e9"}'.encode("latin-1"),
    ],
)
def test_decode_garbage(data: bytes) -> None:
    assert_rejected(data)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_decode_deeply_nested_json(depth: int) -> None:
    assert_rejected(b"[" * depth + b"]" * depth)
    nested_args = raw(good_request(args={})).replace(
        b'"args": {}', b'"args": {"x": ' + b"[" * depth + b"]" * depth + b"}"
    )
    assert nested_args != raw(good_request(args={}))
    assert_rejected(nested_args)


def test_decode_deep_but_reasonable_args_accepted() -> None:
    args: Any = "leaf"
    for _ in range(50):
        args = {"k": args}
    assert decode_request(raw(good_request(args=args))).args == args


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"verb": 3}, "verb"),
        ({"verb": "PS"}, "verb"),
        ({"verb": "p.s"}, "verb"),
        ({"verb": ""}, "verb"),
        ({"args": [1, 2]}, "args"),
        ({"args": "all"}, "args"),
        ({"ttl": "soon"}, "ttl"),
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": 10**9}, "ttl"),
        ({"sender": "x" * 257}, "sender"),
        ({"sig": 5}, "sig"),
        ({"sig": "s" * 1025}, "sig"),
        ({"kind": "reply"}, "kind"),
        ({"v": 0}, "v"),
        ({"v": -1}, "v"),
        ({"v": "one"}, "v"),
        ({"issued_at": "yesterday"}, "issued_at"),
        ({"issued_at": [2024, 5, 1]}, "issued_at"),
        ({"target": "pi-4"}, "target"),
        ({"target": {}}, "target"),
        ({"target": {"host": "pi-4", "selector": {}}}, "target"),
        ({"target": {"selector": {"labels": ["role in ("]}}}, "target"),
        ({"target": {"selector": {"hosts": ["*.>"]}}}, "target"),
        ({"target": {"selector": {"hosts": "pi-*"}}}, "target"),
        ({"target": {"selector": {"nope": 1}}}, "target"),
    ],
)
def test_decode_wrong_types_and_values(change: dict[str, Any], field: str) -> None:
    exc = assert_rejected(raw(good_request(**change)))
    assert field in exc.message
    assert exc.code is ErrorCode.BAD_REQUEST
    assert exc.detail["errors"]


@pytest.mark.parametrize("missing", ["verb", "target"])
def test_decode_missing_required_field(missing: str) -> None:
    data = good_request()
    del data[missing]
    exc = assert_rejected(raw(data))
    assert missing in exc.message


def test_decode_unknown_field_rejected() -> None:
    exc = assert_rejected(raw(good_request(extra_field=1)))
    assert "extra_field" in exc.message
    exc = assert_rejected(raw(good_request(target={"host": "a", "hosts": ["b"]})))
    assert "target" in exc.message


@pytest.mark.parametrize(
    "stamp", ["2024-05-01T12:00:00", "2024-05-01 12:00:00", "2024-05-01T12:00:00.123456"]
)
def test_decode_naive_datetime_rejected(stamp: str) -> None:
    exc = assert_rejected(raw(good_request(issued_at=stamp)))
    assert "issued_at" in exc.message


def test_decode_huge_payload() -> None:
    big = raw(good_request(args={"blob": "x" * MAX_REQUEST_BYTES}))
    exc = assert_rejected(big, PayloadTooLarge)
    assert exc.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert exc.detail == {"size": len(big), "limit": MAX_REQUEST_BYTES}
    # Size is checked before parsing: garbage that is too large is "too large".
    assert_rejected(b"\xff" * (MAX_REQUEST_BYTES + 1), PayloadTooLarge)


def test_decode_size_limit_boundary() -> None:
    base = raw(good_request(args={"blob": ""}))
    pad = 1000 - len(base)
    exact = raw(good_request(args={"blob": "x" * pad}))
    assert len(exact) == 1000
    assert decode_request(exact, max_bytes=1000).args == {"blob": "x" * pad}
    assert_rejected_limit = pytest.raises(PayloadTooLarge)
    with assert_rejected_limit:
        decode_request(exact, max_bytes=999)


@pytest.mark.parametrize("version", [PROTOCOL_VERSION + 1, 99, 10**20])
def test_decode_newer_version(version: int) -> None:
    exc = assert_rejected(raw(good_request(v=version)), UnsupportedVersion)
    assert exc.code is ErrorCode.UNSUPPORTED_VERSION
    assert exc.detail == {"supported": [PROTOCOL_VERSION]}
    # Even when the rest is not a valid v1 request: a newer peer may have changed it.
    assert_rejected(
        raw({"v": version, "id": "0123456789abcdef", "verb": {"new": 1}}), UnsupportedVersion
    )


def test_decode_newer_version_with_bad_id_still_unsupported() -> None:
    assert_rejected(raw(good_request(v=PROTOCOL_VERSION + 1, id="bad id")), UnsupportedVersion)


@pytest.mark.parametrize(
    "rid",
    [
        "",
        "short",
        "x" * 65,
        "has space-1234",
        "dots.are.bad",
        "star*1234",
        "ünïcode-123",
        12345678,
        None,
        ["0123456789abcdef"],
    ],
)
def test_decode_bad_request_ids(rid: Any) -> None:
    exc = assert_rejected(raw(good_request(id=rid)))
    assert "id" in exc.message


@pytest.mark.parametrize(
    "host", ["", "a.b", "*", ">", "pi-4.>", "a b", "a\n", "x" * 65, "ünïcode", 5, None]
)
def test_decode_hostile_target_host(host: Any) -> None:
    exc = assert_rejected(raw(good_request(target={"host": host})))
    assert "target" in exc.message


def test_decode_exception_chains_validation_error() -> None:
    with pytest.raises(BadRequest) as info:
        decode_request(raw(good_request(verb=1)))
    assert isinstance(info.value.__cause__, ValidationError)


def test_decode_summary_names_count_of_more_errors() -> None:
    exc = assert_rejected(raw({"v": 1, "id": "0", "verb": 1, "ttl": "x", "sig": 1, "kind": "y"}))
    assert "more" in exc.message
    assert len(exc.detail["errors"]) <= 10


# --- request_head -------------------------------------------------------------------------------


def test_request_head_of_valid_request() -> None:
    assert request_head(raw(good_request())) == (PROTOCOL_VERSION, "0123456789abcdef")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (good_request(verb=1), (1, "0123456789abcdef")),
        (good_request(target={"host": "a.b"}), (1, "0123456789abcdef")),
        (good_request(extra=1), (1, "0123456789abcdef")),
        ({"id": "0123456789abcdef"}, (None, "0123456789abcdef")),
        ({"v": "x", "id": "0123456789abcdef"}, (None, "0123456789abcdef")),
        ({"v": True, "id": "0123456789abcdef"}, (None, "0123456789abcdef")),
        ({"v": 2.5, "id": "0123456789abcdef"}, (None, "0123456789abcdef")),
        ({"v": 2, "id": "bad id"}, (2, None)),
        ({"v": 2, "id": 12345678}, (2, None)),
        ({"v": 2}, (2, None)),
        ({}, (None, None)),
        ([1, 2], (None, None)),
        ("0123456789abcdef", (None, None)),
    ],
)
def test_request_head_reads_what_it_can(data: Any, expected: tuple[Any, Any]) -> None:
    assert request_head(raw(data)) == expected


@pytest.mark.parametrize("data", [b"", b"\xff", b"{", b"[" * 10_000 + b"]" * 10_000])
def test_request_head_of_garbage(data: bytes) -> None:
    assert request_head(data) == (None, None)


# --- hypothesis: nothing but ShoalError escapes ------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

request_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.integers(-3, 5), json_values),
        "kind": st.sampled_from(["request", "reply"]) | json_values,
        "id": st.sampled_from(["0123456789abcdef", "bad"]) | json_values,
        "verb": st.sampled_from(["ps", "ping", "PS"]) | json_values,
        "args": json_values,
        "issued_at": st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01T12:00:00"]) | json_values,
        "ttl": st.floats(-10, 1e6) | json_values,
        "target": st.fixed_dictionaries(
            {},
            optional={
                "host": st.sampled_from(["pi-4", "a.b", ">"]) | json_values,
                "selector": st.fixed_dictionaries(
                    {},
                    optional={
                        "hosts": st.lists(st.sampled_from(["pi-*", "*.>", ""]), max_size=3),
                        "labels": st.lists(
                            st.sampled_from(["role=web", "a in (", "!x", ""]), max_size=3
                        ),
                    },
                )
                | json_values,
            },
        )
        | json_values,
        "sig": json_values,
    },
)


def check_only_typed_errors(data: bytes) -> None:
    try:
        result = decode_request(data)
    except ShoalError as exc:
        assert isinstance(exc, BadRequest | UnsupportedVersion | PayloadTooLarge)
        assert isinstance(exc.message, str)
        assert_reply_serializable(exc)
    else:
        assert isinstance(result, Request)
    head = request_head(data)
    assert head[0] is None or type(head[0]) is int
    assert head[1] is None or isinstance(head[1], str)


@FAST
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_raise_shoal_errors(data: bytes) -> None:
    check_only_typed_errors(data)


@FAST
@given(json_values)
def test_arbitrary_json_only_raises_shoal_errors(value: Any) -> None:
    check_only_typed_errors(json.dumps(value).encode())


@FAST
@given(request_like)
def test_request_like_json_only_raises_shoal_errors(value: dict[str, Any]) -> None:
    check_only_typed_errors(json.dumps(value).encode())


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text_only_raises_shoal_errors(text: str) -> None:
    check_only_typed_errors(text.encode("utf-8", "surrogatepass"))
