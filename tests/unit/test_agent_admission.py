"""Admission as a pure function: the checks an agent makes before acting, without NATS."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.admission import Caller, Gate, admit, check_window, is_for_host
from shoal.agent.journal import RequestJournal
from shoal.agent.trust import TrustStore
from shoal.protocol import (
    BadRequest,
    ErrorCode,
    Expired,
    Replayed,
    Request,
    Selector,
    ShoalError,
    Signer,
    Subjects,
    Target,
    UnknownVerb,
    Verb,
    utcnow,
)
from shoal.protocol.signing import Forbidden, Unauthorized

SUBJECTS = Subjects("shoal")
HOST = "web-1"
FACTS = {"host": HOST, "role": "web", "arch": "amd64"}


def gate(journal: RequestJournal | None = None, trust: TrustStore | None = None) -> Gate:
    return Gate(
        subjects=SUBJECTS,
        host_id=HOST,
        selectable=lambda: dict(FACTS),
        trust=trust,
        journal=journal if journal is not None else RequestJournal(None),
        max_clock_skew=60.0,
    )


def request(verb: str = Verb.PS, **fields: Any) -> Request:
    fields.setdefault("target", Target(host=HOST))
    return Request(verb=verb, sender="test", **fields)


def data(req: Request, signer: Signer | None = None) -> bytes:
    doc = json.loads(req.model_dump_json(exclude_none=True))
    if signer is not None:
        doc = signer.sign_document(doc)
    return json.dumps(doc).encode()


def test_a_direct_request_is_admitted_and_journaled() -> None:
    journal = RequestJournal(None)
    req = request(args={"all": True})
    caller = Caller()
    admission = admit(gate(journal), SUBJECTS.host(HOST, Verb.PS), data(req), utcnow(), caller)
    assert admission is not None
    assert admission.verb == Verb.PS and admission.request.id == req.id
    assert admission.signer is None and admission.key is None  # an insecure agent
    assert caller.request is not None and caller.request.id == req.id
    entry = journal.get(req.id)
    assert entry is not None and entry.state == "running"


def test_the_same_request_twice_is_replayed() -> None:
    g = gate()
    req = request()
    subject = SUBJECTS.host(HOST, Verb.PS)
    assert admit(g, subject, data(req), utcnow(), Caller()) is not None
    with pytest.raises(Replayed) as info:
        admit(g, subject, data(req), utcnow(), Caller())
    assert info.value.detail["state"] == "running"


def test_a_broadcast_for_other_hosts_is_not_admitted_nor_refused() -> None:
    subject = SUBJECTS.broadcast(Verb.PS)
    other = request(target=Target(selector=Selector(labels=("role=db",))))
    assert admit(gate(), subject, data(other), utcnow(), Caller()) is None
    assert not is_for_host(SUBJECTS, subject, data(other), HOST, lambda: dict(FACTS))
    mine = request(target=Target(selector=Selector(labels=("role=web",))))
    assert admit(gate(), subject, data(mine), utcnow(), Caller()) is not None


@pytest.mark.parametrize(
    ("subject", "req", "error"),
    [
        (SUBJECTS.host(HOST, Verb.PING), request(Verb.PS), BadRequest),
        (SUBJECTS.host(HOST, Verb.PS), request(target=Target(host="web-2")), BadRequest),
        (SUBJECTS.host(HOST, "nope"), request("nope"), UnknownVerb),
    ],
    ids=["verb-mismatch", "other-host", "unknown-verb"],
)
def test_misdirected_requests_are_refused(
    subject: str, req: Request, error: type[ShoalError]
) -> None:
    with pytest.raises(error):  # built at collection: judged at its own issue time
        admit(gate(), subject, data(req), req.issued_at, Caller())


def test_invalid_args_carry_machine_readable_errors() -> None:
    req = request(args={"all": "maybe", "bogus": 1})
    with pytest.raises(BadRequest) as info:
        admit(gate(), SUBJECTS.host(HOST, Verb.PS), data(req), utcnow(), Caller())
    errors = info.value.detail["errors"]
    assert {tuple(e["loc"]) for e in errors} == {("all",), ("bogus",)}
    assert all(isinstance(e["msg"], str) and isinstance(e["type"], str) for e in errors)
    json.dumps(errors)  # plain JSON values


def test_the_time_window_uses_the_given_clock_and_the_wire_form() -> None:
    req = request(ttl=10)
    check_window(req, req.issued_at + timedelta(seconds=69), 60.0)  # within ttl + skew
    late = req.issued_at + timedelta(seconds=71)
    with pytest.raises(Expired) as info:
        check_window(req, late, 60.0)
    assert info.value.code == ErrorCode.EXPIRED
    detail = info.value.detail
    assert detail["agent_time"].endswith("Z") and detail["expires_at"].endswith("Z")
    assert datetime.fromisoformat(detail["agent_time"]) == late
    with pytest.raises(Expired) as ahead:
        check_window(req, req.issued_at - timedelta(seconds=61), 60.0)
    assert ahead.value.detail["issued_at"].endswith("Z")


def trust_file(tmp_path: Path, signer: Signer, role: str) -> TrustStore:
    path = tmp_path / "trust.toml"
    path.write_text(f'[[trust]]\nname = "alice"\nkey = "{signer.public_key}"\nrole = "{role}"\n')
    store = TrustStore(path)
    store.load()
    return store


def test_a_trusted_signer_is_admitted_with_its_key(tmp_path: Path) -> None:
    signer = Signer.generate()
    trust = trust_file(tmp_path, signer, "operator")
    req = request()
    admission = admit(
        gate(trust=trust), SUBJECTS.host(HOST, Verb.PS), data(req, signer), utcnow(), Caller()
    )
    assert admission is not None
    assert admission.key == signer.public_key
    assert admission.signer is not None and admission.signer.name == "alice"


def test_an_untrusted_key_and_a_missing_role_are_refused(tmp_path: Path) -> None:
    signer = Signer.generate()
    trust = trust_file(tmp_path, signer, "viewer")
    stranger = Signer.generate()
    caller = Caller()
    with pytest.raises(Unauthorized):
        admit(
            gate(trust=trust),
            SUBJECTS.host(HOST, Verb.PS),
            data(request(), stranger),
            utcnow(),
            caller,
        )
    assert caller.key == stranger.public_key and caller.signer is None
    prune = request(Verb.PRUNE, args={"dry_run": True})
    with pytest.raises(Forbidden) as info:
        admit(
            gate(trust=trust),
            SUBJECTS.host(HOST, Verb.PRUNE),
            data(prune, signer),
            utcnow(),
            Caller(),
        )
    assert info.value.detail == {"role": "viewer", "needed": "operator"}
