"""Host ids (protocol/hostid.py) and subject building (protocol/subjects.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.protocol import (
    DEFAULT_PREFIX,
    ErrorCode,
    InvalidHostId,
    ShoalError,
    Subjects,
    sanitize_host_id,
    validate_host_id,
)

SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

VALID_IDS = ["a", "web01", "pi-4", "PI_4", "0", "-", "_", "a-b_C-9", "x" * 64]
INVALID_IDS = [
    "",
    "a.b",
    "web01.example.com",
    "*",
    "a*",
    ">",
    "a>",
    "a b",
    " a",
    "a ",
    "a\tb",
    "a\nb",
    "a\n",
    "\n",
    "a\r",
    "a\x00",
    "x" * 65,
    "ünïcode",
    "host\u00a0",
    "héte",
    "日本",
    "a/b",
    "$SYS",
    "a:b",
]


# --- host ids ------------------------------------------------------------------


@pytest.mark.parametrize("host_id", VALID_IDS)
def test_valid_host_ids(host_id: str) -> None:
    assert validate_host_id(host_id) == host_id


@pytest.mark.parametrize("host_id", INVALID_IDS)
def test_invalid_host_ids(host_id: str) -> None:
    with pytest.raises(InvalidHostId) as info:
        validate_host_id(host_id)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ShoalError)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "invalid host id" in str(info.value)


@pytest.mark.parametrize("value", [None, 1, b"web01", ["web01"]])
def test_non_string_host_id(value: object) -> None:
    with pytest.raises(InvalidHostId, match="must be a string"):
        validate_host_id(value)  # type: ignore[arg-type]


def test_long_invalid_id_is_shortened_in_message() -> None:
    with pytest.raises(InvalidHostId) as info:
        validate_host_id("x" * 10_000)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web01", "web01"),
        ("web01.example.com", "web01-example-com"),
        ("pi 4", "pi-4"),
        ("  pi 4\n", "pi-4"),
        ("ünïcode", "n-code"),
        ("...", "host"),
        ("", "host"),
        ("   ", "host"),
        ("*>", "host"),
        ("a.*.>", "a"),
        ("x" * 100, "x" * 64),
    ],
)
def test_sanitize_host_id(name: str, expected: str) -> None:
    result = sanitize_host_id(name)
    assert result == expected
    assert validate_host_id(result) == result


@settings(max_examples=200, deadline=None, database=None)
@given(st.text())
def test_sanitize_always_yields_a_valid_id(name: str) -> None:
    result = sanitize_host_id(name)
    assert validate_host_id(result) == result
    assert SUBJECT_TOKEN.fullmatch(result)


@settings(max_examples=100, deadline=None, database=None)
@given(st.from_regex(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?", fullmatch=True))
def test_sanitize_keeps_valid_ids(host_id: str) -> None:
    assert sanitize_host_id(host_id) == host_id


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(min_size=1, max_size=80))
def test_validate_accepts_exactly_subject_tokens(text: str) -> None:
    if SUBJECT_TOKEN.fullmatch(text) and "\n" not in text:
        assert validate_host_id(text) == text
    else:
        with pytest.raises(InvalidHostId):
            validate_host_id(text)


# --- subjects --------------------------------------------------------------------


def test_default_prefix_subjects() -> None:
    s = Subjects()
    assert s.prefix == DEFAULT_PREFIX == "shoal"
    assert s.host("pi-4", "ps") == "shoal.host.pi-4.ps"
    assert s.host_all_verbs("pi-4") == "shoal.host.pi-4.*"
    assert s.broadcast("ps") == "shoal.all.ps"
    assert s.broadcast_all_verbs() == "shoal.all.*"
    assert s.heartbeat("pi-4") == "shoal.hb.pi-4"
    assert s.heartbeat_all() == "shoal.hb.>"
    assert s.event("pi-4", "started") == "shoal.events.pi-4.started"
    assert s.events_all() == "shoal.events.>"
    assert s.audit("pi-4") == "shoal.audit.pi-4"


@pytest.mark.parametrize("prefix", ["fleet", "acme.shoal", "a-b_c.d1", "X"])
def test_custom_prefix_subjects(prefix: str) -> None:
    s = Subjects(prefix)
    assert s.host("web01", "ping") == f"{prefix}.host.web01.ping"
    assert s.host_all_verbs("web01") == f"{prefix}.host.web01.*"
    assert s.broadcast("ping") == f"{prefix}.all.ping"
    assert s.broadcast_all_verbs() == f"{prefix}.all.*"
    assert s.heartbeat("web01") == f"{prefix}.hb.web01"
    assert s.heartbeat_all() == f"{prefix}.hb.>"
    assert s.event("web01", "container_die") == f"{prefix}.events.web01.container_die"
    assert s.events_all() == f"{prefix}.events.>"
    assert s.audit("web01") == f"{prefix}.audit.web01"


@pytest.mark.parametrize("host_id", INVALID_IDS)
def test_subjects_reject_hostile_host_ids(host_id: str) -> None:
    s = Subjects()
    for build in (
        lambda: s.host(host_id, "ps"),
        lambda: s.host_all_verbs(host_id),
        lambda: s.heartbeat(host_id),
        lambda: s.event(host_id, "started"),
        lambda: s.audit(host_id),
    ):
        with pytest.raises(InvalidHostId):
            build()


@pytest.mark.parametrize(
    "prefix", ["", ".", "a.", ".a", "a..b", "a.*", "*", ">", "a.>", "a b", "a\n", "shoal\t", "é"]
)
def test_bad_prefix_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Subjects(prefix)


@pytest.mark.parametrize(
    "verb", ["", "PS", "p.s", "*", ">", "ps ", " ps", "ps\n", "1ps", "-ps", "p s", "x" * 33, "pś"]
)
def test_bad_verb_tokens_rejected(verb: str) -> None:
    s = Subjects()
    with pytest.raises(ValueError, match="verb token"):
        s.host("web01", verb)
    with pytest.raises(ValueError, match="verb token"):
        s.broadcast(verb)
    with pytest.raises(ValueError, match="verb token"):
        s.event("web01", verb)


@pytest.mark.parametrize("verb", ["ps", "ping", "p", "a_b-c9", "x" * 32])
def test_good_verb_tokens(verb: str) -> None:
    assert Subjects().broadcast(verb) == f"shoal.all.{verb}"


def test_verb_of() -> None:
    s = Subjects()
    assert s.verb_of(s.host("pi-4", "ps")) == "ps"
    assert s.verb_of(s.broadcast("ping")) == "ping"


@pytest.mark.parametrize("prefix", ["shoal", "acme.fleet"])
def test_host_of_heartbeat(prefix: str) -> None:
    s = Subjects(prefix)
    assert s.host_of_heartbeat(s.heartbeat("pi-4")) == "pi-4"
    with pytest.raises(ValueError, match="not a heartbeat subject"):
        s.host_of_heartbeat(f"{prefix}.host.pi-4.ps")
    with pytest.raises(ValueError, match="not a heartbeat subject"):
        s.host_of_heartbeat("other.hb.pi-4")
    # Tokens after the host id, or an empty id, are not a valid heartbeat subject.
    for bad in (f"{prefix}.hb.pi-4.extra", f"{prefix}.hb.", f"{prefix}.hb.*", f"{prefix}.hb.>"):
        with pytest.raises(InvalidHostId):
            s.host_of_heartbeat(bad)


def test_prefix_mismatch_for_heartbeat() -> None:
    assert Subjects("a").host_of_heartbeat("a.hb.x") == "x"
    with pytest.raises(ValueError):
        Subjects("a.b").host_of_heartbeat("a.hb.x")
