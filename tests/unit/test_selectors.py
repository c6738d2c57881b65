"""Selector grammar and matching semantics (protocol/selectors.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from shoal.protocol import (
    AgentFacts,
    ErrorCode,
    InvalidSelector,
    Requirement,
    Selector,
    ShoalError,
    parse_label_selector,
    validate_host_glob,
)
from shoal.protocol.selectors import MAX_SELECTOR_LENGTH, Op


def sel(*labels: str, hosts: tuple[str, ...] = ()) -> Selector:
    return Selector.build(hosts=hosts, labels=labels)


# --- grammar: each operator -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("role=web", Requirement("role", Op.EQ, ("web",))),
        ("role==web", Requirement("role", Op.EQ, ("web",))),
        ("role!=web", Requirement("role", Op.NE, ("web",))),
        ("role", Requirement("role", Op.EXISTS)),
        ("!canary", Requirement("canary", Op.NOT_EXISTS)),
        ("arch in (arm64,arm)", Requirement("arch", Op.IN, ("arm64", "arm"))),
        ("arch notin (arm64,arm)", Requirement("arch", Op.NOT_IN, ("arm64", "arm"))),
        ("example.com/tier=gold", Requirement("example.com/tier", Op.EQ, ("gold",))),
        ("k8s.io/a-b_c.d", Requirement("k8s.io/a-b_c.d", Op.EXISTS)),
        ("!example.com/tier", Requirement("example.com/tier", Op.NOT_EXISTS)),
        ("a.b/c in (x)", Requirement("a.b/c", Op.IN, ("x",))),
        ("role=", Requirement("role", Op.EQ, ("",))),
        ("v=1.2_3-x", Requirement("v", Op.EQ, ("1.2_3-x",))),
    ],
)
def test_single_clause(text: str, expected: Requirement) -> None:
    assert parse_label_selector(text) == (expected,)


@pytest.mark.parametrize(
    "text",
    [
        "  role = web ,  arch in ( arm64 , arm ) ,  ! canary  ",
        "role=web,arch in (arm64,arm),!canary",
        "role==web,\tarch in(arm64,arm),\n!canary",
        "role =web , arch  in  (arm64 ,arm)  ,!canary",
    ],
)
def test_whitespace_tolerance(text: str) -> None:
    assert parse_label_selector(text) == (
        Requirement("role", Op.EQ, ("web",)),
        Requirement("arch", Op.IN, ("arm64", "arm")),
        Requirement("canary", Op.NOT_EXISTS),
    )


def test_design_example_matches() -> None:
    s = sel("role=web,arch in (arm64,arm),!canary")
    assert s.matches("pi-1", {"role": "web", "arch": "arm64"})
    assert s.matches("pi-2", {"role": "web", "arch": "arm", "zone": "a"})
    assert not s.matches("x-1", {"role": "web", "arch": "amd64"})
    assert not s.matches("pi-3", {"role": "db", "arch": "arm64"})
    assert not s.matches("pi-4", {"role": "web", "arch": "arm64", "canary": ""})
    assert not s.matches("pi-5", {"arch": "arm64"})


# --- matching semantics of each operator ----------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("k=v", {"k": "v"}, True),
        ("k=v", {"k": "w"}, False),
        ("k=v", {}, False),
        ("k==v", {"k": "v"}, True),
        ("k==v", {"k": "V"}, False),  # values are case-sensitive
        ("k!=v", {"k": "w"}, True),
        ("k!=v", {"k": "v"}, False),
        ("k!=v", {}, True),  # absent key: != matches
        ("k", {"k": ""}, True),
        ("k", {"other": "k"}, False),
        ("!k", {}, True),
        ("!k", {"k": "v"}, False),
        ("!k", {"k": ""}, False),
        ("k in (a,b)", {"k": "a"}, True),
        ("k in (a,b)", {"k": "b"}, True),
        ("k in (a,b)", {"k": "c"}, False),
        ("k in (a,b)", {}, False),
        ("k notin (a,b)", {"k": "c"}, True),
        ("k notin (a,b)", {"k": "a"}, False),
        ("k notin (a,b)", {}, True),  # absent key: notin matches
        ("k=", {"k": ""}, True),
        ("k=", {"k": "x"}, False),
        ("example.com/tier=gold", {"example.com/tier": "gold"}, True),
        ("example.com/tier=gold", {"tier": "gold"}, False),
    ],
)
def test_operator_semantics(text: str, labels: dict[str, str], expected: bool) -> None:
    assert sel(text).matches("h1", labels) is expected
    (req,) = parse_label_selector(text)
    assert req.matches(labels) is expected


def test_clauses_within_one_selector_are_anded() -> None:
    s = sel("a=1,b=2")
    assert s.matches("h", {"a": "1", "b": "2"})
    assert not s.matches("h", {"a": "1"})
    assert not s.matches("h", {"b": "2"})


# --- Selector combination rules ---------------------------------------------------


def test_empty_selector_matches_everything() -> None:
    s = Selector()
    assert s.is_everything
    assert Selector.build().is_everything
    assert s.matches("anything", {})
    assert s.matches("x", {"role": "web"})


def test_repeated_host_globs_widen() -> None:
    s = sel(hosts=("pi-*", "web0[12]"))
    assert not s.is_everything
    assert s.matches("pi-4", {})
    assert s.matches("web01", {})
    assert s.matches("web02", {})
    assert not s.matches("web03", {})
    assert not s.matches("db1", {})


def test_host_glob_is_case_sensitive_and_anchored() -> None:
    s = sel(hosts=("pi-?",))
    assert s.matches("pi-1", {})
    assert not s.matches("PI-1", {})
    assert not s.matches("pi-10", {})
    assert not s.matches("xpi-1", {})


def test_repeated_label_selectors_narrow() -> None:
    s = sel("role=web", "arch=arm64")
    assert s.matches("h", {"role": "web", "arch": "arm64"})
    assert not s.matches("h", {"role": "web", "arch": "amd64"})
    assert not s.matches("h", {"role": "db", "arch": "arm64"})


def test_globs_and_labels_must_both_hold() -> None:
    s = sel("role=web", hosts=("pi-*", "edge-*"))
    assert s.matches("pi-1", {"role": "web"})
    assert s.matches("edge-9", {"role": "web"})
    assert not s.matches("pi-1", {"role": "db"})
    assert not s.matches("srv-1", {"role": "web"})


def test_requirements_flatten_all_selectors() -> None:
    s = sel("a=1,b", "!c")
    assert s.requirements() == (
        Requirement("a", Op.EQ, ("1",)),
        Requirement("b", Op.EXISTS),
        Requirement("c", Op.NOT_EXISTS),
    )


def test_selector_json_round_trip() -> None:
    s = sel("role=web", "!canary", hosts=("pi-*",))
    assert Selector.model_validate_json(s.model_dump_json()) == s


def test_build_consumes_generators_once() -> None:
    # A generator must not be exhausted by validation and leave an empty
    # (match-everything) selector behind.
    s = Selector.build(hosts=(g for g in ["web-1"]), labels=(x for x in ["role=web"]))
    assert s.hosts == ("web-1",)
    assert s.labels == ("role=web",)
    assert not s.matches("other", {"role": "web"})


@pytest.mark.parametrize("kwargs", [{"hosts": "web*"}, {"labels": "role=web"}])
def test_build_refuses_a_bare_string(kwargs: dict[str, str]) -> None:
    # A bare string would be split into one glob per character ('*' matches all).
    with pytest.raises(TypeError):
        Selector.build(**kwargs)  # type: ignore[arg-type]


# --- facts are selectable like labels ---------------------------------------------


def make_facts(**overrides: object) -> AgentFacts:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    data: dict[str, object] = {
        "host_id": "pi-4",
        "instance": "i-1",
        "labels": {"role": "web", "zone": "eu"},
        "arch": "arm",
        "variant": "v7",
        "os": "linux",
        "kernel": "6.1.0",
        "docker": {"reachable": True, "version": "26.1"},
        "agent_version": "0.1.0",
        "protocol_version": 1,
        "started_at": now,
        "sent_at": now,
        "heartbeat_interval": 5.0,
    }
    data.update(overrides)
    return AgentFacts.model_validate(data)


def test_facts_selectable_like_labels() -> None:
    facts = make_facts()
    selectable = facts.selectable()
    assert selectable["arch"] == "arm"
    assert selectable["variant"] == "v7"
    assert selectable["os"] == "linux"
    assert selectable["host"] == "pi-4"
    assert selectable["role"] == "web"
    assert sel("arch in (arm64,arm),variant=v7,os=linux,role=web").matches(
        facts.host_id, selectable
    )
    assert sel("host=pi-4").matches(facts.host_id, selectable)
    assert not sel("arch=amd64").matches(facts.host_id, selectable)
    assert not sel("os!=linux").matches(facts.host_id, selectable)


def test_facts_without_variant_leave_variant_absent() -> None:
    facts = make_facts(arch="amd64", variant="")
    selectable = facts.selectable()
    assert "variant" not in selectable
    assert sel("!variant").matches(facts.host_id, selectable)
    assert sel("variant notin (v7)").matches(facts.host_id, selectable)


def test_facts_win_over_labels_of_the_same_name() -> None:
    facts = make_facts(labels={"arch": "amd64", "host": "other", "role": "web"})
    selectable = facts.selectable()
    assert selectable["arch"] == "arm"
    assert selectable["host"] == "pi-4"
    assert not sel("arch=amd64").matches(facts.host_id, selectable)


# --- malformed label selectors -----------------------------------------------------


def test_invalid_selector_is_value_error_and_shoal_error() -> None:
    with pytest.raises(InvalidSelector) as info:
        parse_label_selector("a=b,,c")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ShoalError)
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("k in (a,b", "unbalanced"),
        ("k in a,b)", "unbalanced"),
        ("k in ((a),b)", "nested"),
        ("a=b,,c", "empty clause"),
        ("a=b,", "empty clause"),
        (",a=b", "empty clause"),
        ("k in ()", "k in ()"),
        ("k in (  )", "k in (  )"),
        ("k in (a,,b)", "k in (a,,b)"),
        ("k in (a,)", "k in (a,)"),
        ("k in (a b)", "k in (a b)"),
        ("k notin (a,b c)", "k notin (a,b c)"),
        ("role=web,=v", "'=v'"),
        ("k in a,b", "'k in a'"),
        ("role=we b", "'role=we b'"),
        ("ro le=web", "'ro le=web'"),
        ("role=web;rm -rf", "'role=web;rm -rf'"),
        ("role=w*b", "'role=w*b'"),
        ("role=web>", "'role=web>'"),
        ("a===b", "'a===b'"),
        ("!k=v", "'!k=v'"),
        ("!!k", "'!!k'"),
        ("k in (a) x", "'k in (a) x'"),
        ("-k=v", "'-k=v'"),
        ("k.=v", "'k.=v'"),
        ("rôle=web", "'rôle=web'"),
        ("k=" + "v" * 64, "v" * 64),
        ("k" * 129, "k" * 129),
        ("k!", "'k!'"),
        ("k in", "'k in'"),
        ("ok=1,bad clause", "'bad clause'"),
    ],
)
def test_malformed_label_selector_names_bad_clause(text: str, named: str) -> None:
    with pytest.raises(InvalidSelector) as info:
        parse_label_selector(text)
    assert named in str(info.value)
    assert info.value.message == str(info.value)
    # The Selector model refuses it too.
    with pytest.raises(InvalidSelector):
        Selector.build(labels=[text])
    with pytest.raises(ValidationError):
        Selector(labels=(text,))


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_selector_text_rejected(text: str) -> None:
    with pytest.raises(InvalidSelector, match="empty"):
        parse_label_selector(text)


def test_over_long_selector_rejected() -> None:
    text = ",".join(["a=b"] * (MAX_SELECTOR_LENGTH // 4 + 1))
    assert len(text) > MAX_SELECTOR_LENGTH
    with pytest.raises(InvalidSelector, match="longer than"):
        parse_label_selector(text)
    # Just at the limit is fine.
    ok = ("a=" + "b" * 63 + ",") * (MAX_SELECTOR_LENGTH // 66)
    assert len(ok[:-1]) <= MAX_SELECTOR_LENGTH
    assert len(parse_label_selector(ok[:-1])) == MAX_SELECTOR_LENGTH // 66


@pytest.mark.parametrize("value", [None, 1, b"role=web", ["role=web"], {"role": "web"}])
def test_non_string_selector_rejected(value: object) -> None:
    with pytest.raises(InvalidSelector, match="string"):
        parse_label_selector(value)  # type: ignore[arg-type]


def test_longest_key_and_value_accepted() -> None:
    key, value = "k" * 128, "v" * 63
    assert parse_label_selector(f"{key}={value}") == (Requirement(key, Op.EQ, (value,)),)


# --- host globs ----------------------------------------------------------------------


@pytest.mark.parametrize("glob", ["pi-*", "web0[12]", "h?", "*", "[!a]*", "a_b-C9", "x" * 128])
def test_valid_host_globs(glob: str) -> None:
    assert validate_host_glob(glob) == glob
    assert Selector.build(hosts=[glob]).hosts == (glob,)


@pytest.mark.parametrize(
    "glob",
    [
        "a.b",
        ">",
        "a b",
        "*.>",
        "",
        "pi-*.hb",
        "a\tb",
        "a\n",
        "x" * 129,
        "héte",
        "a/b",
        "$SYS",
        None,
        3,
    ],
)
def test_hostile_host_globs_rejected(glob: object) -> None:
    with pytest.raises(InvalidSelector) as info:
        validate_host_glob(glob)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "invalid host glob" in str(info.value)
    if isinstance(glob, str):
        with pytest.raises(InvalidSelector):
            Selector.build(hosts=["ok-*", glob])
        with pytest.raises(ValidationError):
            Selector(hosts=(glob,))


def test_selector_model_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        Selector.model_validate({"hosts": [], "labels": [], "limit": 3})
