"""The exported JSON Schema (protocol/schema.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shoal.protocol import (
    PROTOCOL_VERSION,
    VERBS,
    ErrorCode,
    NotFound,
    Progress,
    Reply,
    Request,
    Selector,
    Target,
    error_reply,
    protocol_schema,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return protocol_schema()


def resolve(schema: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/"), ref
    node: Any = schema
    for part in ref[2:].split("/"):
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    assert isinstance(node, dict)
    return node


def all_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from all_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from all_refs(item)


def sample_messages() -> dict[str, dict[str, Any]]:
    request = Request(
        verb="ps",
        args={"all": True},
        sender="ci",
        issued_at=T0,
        target=Target(selector=Selector.build(hosts=["pi-*"], labels=["role=web"])),
    )
    progress = Progress(id=request.id, host="pi-4", seq=0, phase="pull", current=1, total=2)
    ok = Reply(
        id=request.id, host="pi-4", ok=True, result={"containers": []}, started_at=T0, duration=0.1
    )
    failed = error_reply(request.id, "pi-4", NotFound("gone"), started_at=T0)
    return {
        "request": json.loads(request.model_dump_json()),
        "progress": json.loads(progress.model_dump_json()),
        "reply": json.loads(ok.model_dump_json()),
        "reply-error": json.loads(failed.model_dump_json()),
    }


def test_schema_is_json_serializable(schema: dict[str, Any]) -> None:
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["protocol_version"] == PROTOCOL_VERSION


def test_schema_is_deterministic(schema: dict[str, Any]) -> None:
    assert json.dumps(protocol_schema(), sort_keys=True) == json.dumps(schema, sort_keys=True)


def test_schema_messages(schema: dict[str, Any]) -> None:
    messages = schema["messages"]
    assert set(messages) == {"request", "progress", "reply", "heartbeat", "event"}
    expected_titles = {
        "request": "Request",
        "progress": "Progress",
        "reply": "Reply",
        "heartbeat": "AgentFacts",
        "event": "AgentEvent",
    }
    for name, ref in messages.items():
        target = resolve(schema, ref["$ref"])
        assert target["title"] == expected_titles[name]
        assert target["type"] == "object"


def test_schema_verbs(schema: dict[str, Any]) -> None:
    verbs = schema["verbs"]
    assert {"ping", "ps"} <= set(verbs)
    assert set(verbs) == {str(v) for v in VERBS}
    for name, entry in verbs.items():
        spec = VERBS[name]  # type: ignore[index]
        assert entry["role"] == str(spec.role)
        assert entry["mutating"] is spec.mutating
        assert entry["summary"]
        assert resolve(schema, entry["args"]["$ref"])["title"] == spec.args.__name__
        assert resolve(schema, entry["result"]["$ref"])["title"] == spec.result.__name__
    assert resolve(schema, verbs["ps"]["result"]["$ref"])["title"] == "PsResult"
    assert resolve(schema, verbs["ping"]["result"]["$ref"])["title"] == "AgentFacts"


def test_every_ref_resolves(schema: dict[str, Any]) -> None:
    refs = list(all_refs(schema))
    assert len(refs) > 10
    for ref in refs:
        assert ref.startswith("#/$defs/"), ref
        resolve(schema, ref)


def test_schema_lists_every_error_code(schema: dict[str, Any]) -> None:
    assert schema["error_codes"] == [c.value for c in ErrorCode]
    assert set(schema["$defs"]["ErrorCode"]["enum"]) == {c.value for c in ErrorCode}
    # A reply's error code may also be a string unknown to this version.
    code = schema["$defs"]["ErrorInfo"]["properties"]["code"]
    assert {"$ref": "#/$defs/ErrorCode"} in code["anyOf"]
    assert {"type": "string"} in code["anyOf"]


def test_request_schema_constraints(schema: dict[str, Any]) -> None:
    req = schema["$defs"]["Request"]
    assert req["additionalProperties"] is False
    assert set(req["required"]) >= {"verb", "target"}
    props = req["properties"]
    assert props["kind"]["const"] == "request"
    assert props["issued_at"]["format"] == "date-time"
    assert re.fullmatch(props["id"]["pattern"], "0123456789abcdef")
    assert not re.fullmatch(props["id"]["pattern"], "bad id")
    host = schema["$defs"]["Target"]["properties"]["host"]
    host_pattern = next(alt["pattern"] for alt in host["anyOf"] if "pattern" in alt)
    for hostile in ("a.b", "*", ">", "a b", "", "x" * 65):
        assert not re.fullmatch(host_pattern, hostile)
    assert re.fullmatch(host_pattern, "pi-4")


def check_shape(schema: dict[str, Any], node: dict[str, Any], value: Any, path: str) -> None:
    """A tiny structural check (objects, properties, required, const, pattern)."""
    if "$ref" in node:
        check_shape(schema, resolve(schema, node["$ref"]), value, path)
        return
    if "anyOf" in node:
        errors = []
        for alt in node["anyOf"]:
            try:
                check_shape(schema, alt, value, path)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: no alternative matched: {errors}")
    kind = node.get("type")
    if kind == "null":
        assert value is None, path
    elif kind == "string":
        assert isinstance(value, str), path
        if "pattern" in node:
            assert re.search(node["pattern"], value), path
    elif kind == "object":
        assert isinstance(value, dict), path
        for key in node.get("required", []):
            assert key in value, f"{path}.{key} missing"
        props = node.get("properties", {})
        if node.get("additionalProperties") is False:
            assert set(value) <= set(props), f"{path}: extra {set(value) - set(props)}"
        for key, sub in props.items():
            if key in value:
                check_shape(schema, sub, value[key], f"{path}.{key}")
    if "const" in node:
        assert value == node["const"], path
    if "enum" in node:
        assert value in node["enum"], path


@pytest.mark.parametrize("name", ["request", "progress", "reply", "reply-error"])
def test_dumped_messages_fit_schema_shape(schema: dict[str, Any], name: str) -> None:
    message = name.split("-")[0]
    check_shape(schema, schema["messages"][message], sample_messages()[name], message)


def test_shape_check_can_fail(schema: dict[str, Any]) -> None:
    bad = sample_messages()["request"]
    bad["target"] = {"host": "a.b"}
    with pytest.raises(AssertionError):
        check_shape(schema, schema["messages"]["request"], bad, "request")


def test_dumped_messages_validate_with_jsonschema(schema: dict[str, Any]) -> None:
    import jsonschema  # in the dev extra: a missing one is a failure, not a skip

    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    for name, value in sample_messages().items():
        message = name.split("-")[0]
        sub = {**schema, **schema["messages"][message]}
        validator_cls(sub).validate(value)
    bad = sample_messages()["request"]
    bad["target"] = {"host": "a.b"}
    with pytest.raises(jsonschema.ValidationError):
        validator_cls({**schema, **schema["messages"]["request"]}).validate(bad)
