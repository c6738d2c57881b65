"""FleetResult: exit codes and the --json document (controller/result.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shoal.controller.result import ExitCode, FleetResult
from shoal.protocol import ContainerSummary, ErrorCode, ErrorInfo, PsResult
from tests.fakes import make_container

HOSTS = ["host-a", "host-b", "host-c"]


def ps_result(*names: str) -> PsResult:
    return PsResult(containers=[make_container(name) for name in names])


def fleet_result(**fields: Any) -> FleetResult[PsResult]:
    fields.setdefault("targeted", list(HOSTS))
    return FleetResult(verb="ps", request_id="0123456789abcdef", **fields)


DOCKER_DOWN = ErrorInfo(code=ErrorCode.DOCKER_UNAVAILABLE, message="cannot connect")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"replies": {h: ps_result() for h in HOSTS}}, ExitCode.OK),
        (
            {
                "replies": {"host-a": ps_result(), "host-b": ps_result()},
                "errors": {"host-c": DOCKER_DOWN},
            },
            ExitCode.HOST_ERROR,
        ),
        (
            {"replies": {"host-a": ps_result(), "host-b": ps_result()}, "missing": ["host-c"]},
            ExitCode.MISSING,
        ),
        (
            {
                "replies": {"host-a": ps_result()},
                "errors": {"host-b": DOCKER_DOWN},
                "missing": ["host-c"],
            },
            ExitCode.MISSING,  # 4 wins over 1
        ),
        (
            {
                "missing": ["host-c"],
                "offline": ["host-c"],
                "replies": {"host-a": ps_result(), "host-b": ps_result()},
            },
            ExitCode.MISSING,  # known offline is still not an answer
        ),
        ({"errors": {h: DOCKER_DOWN for h in HOSTS}}, ExitCode.HOST_ERROR),
        ({"targeted": []}, ExitCode.NO_MATCH),
    ],
    ids=["all-ok", "error", "missing", "missing-and-error", "offline", "all-errors", "nothing"],
)
def test_exit_code(fields: dict[str, Any], code: ExitCode) -> None:
    result = fleet_result(**fields)
    assert result.exit_code == code
    assert result.ok is (code == ExitCode.OK)
    assert result.to_json()["exit_code"] == int(code)


def test_exit_codes_are_the_documented_numbers() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4]
    assert (ExitCode.OK, ExitCode.HOST_ERROR, ExitCode.NO_MATCH, ExitCode.MISSING) == (0, 1, 3, 4)


def test_to_json_document() -> None:
    result = fleet_result(
        targeted=["host-c", "host-a", "host-b", "host-d"],
        replies={"host-b": ps_result("web-1"), "host-a": ps_result()},
        errors={
            "host-c": ErrorInfo(
                code=ErrorCode.POLICY_DENIED, message="denied", detail={"rule": "no-priv"}
            )
        },
        missing=["host-d"],
        offline=["host-d"],
        duration=1.234567,
    )
    doc = result.to_json()
    assert json.loads(json.dumps(doc)) == doc  # plain JSON values only
    assert set(doc) >= {"targeted", "replies", "errors", "missing", "offline"}
    assert doc["verb"] == "ps" and doc["request_id"] == "0123456789abcdef"
    assert doc["targeted"] == ["host-c", "host-a", "host-b", "host-d"]
    assert list(doc["replies"]) == ["host-a", "host-b"]  # sorted by host
    assert doc["replies"]["host-a"] == {"containers": []}
    (container,) = doc["replies"]["host-b"]["containers"]
    assert ContainerSummary.model_validate(container).name == "web-1"
    assert doc["errors"] == {
        "host-c": {"code": "policy_denied", "message": "denied", "detail": {"rule": "no-priv"}}
    }
    assert doc["missing"] == ["host-d"] and doc["offline"] == ["host-d"]
    assert doc["duration"] == 1.2346
    assert doc["exit_code"] == 4


def test_unknown_error_code_from_a_newer_agent_is_kept() -> None:
    info = ErrorInfo.model_validate({"code": "quota_exceeded", "message": "over quota"})
    assert info.code == "quota_exceeded"
    assert not isinstance(info.code, ErrorCode)
    result = fleet_result(
        replies={"host-a": ps_result(), "host-b": ps_result()}, errors={"host-c": info}
    )
    assert result.exit_code == ExitCode.HOST_ERROR
    doc = result.to_json()
    assert doc["errors"]["host-c"] == {
        "code": "quota_exceeded",
        "message": "over quota",
        "detail": {},
    }
    assert json.loads(json.dumps(doc))["errors"]["host-c"]["code"] == "quota_exceeded"


def test_known_error_code_is_its_wire_string() -> None:
    result = fleet_result(errors={h: DOCKER_DOWN for h in HOSTS})
    assert {e["code"] for e in result.to_json()["errors"].values()} == {"docker_unavailable"}


def test_to_json_copies_lists() -> None:
    result = fleet_result(missing=["host-c"])
    doc = result.to_json()
    doc["targeted"].append("intruder")
    doc["missing"].clear()
    assert result.targeted == HOSTS and result.missing == ["host-c"]
