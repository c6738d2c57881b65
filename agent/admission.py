"""Whether to run a request: every check before acting, as one function of its inputs.

:func:`admit` reads the message, the trust list, the journal and the time it is given,
and returns an :class:`Admission` or raises the typed error the reply carries. It does
no I/O beyond recording an admitted request in the journal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from shoal.protocol import (
    VERBS,
    BadRequest,
    Expired,
    Replayed,
    Request,
    ShoalError,
    Subjects,
    UnknownVerb,
    Verb,
    decode_request,
    required_role,
)
from shoal.protocol.envelope import (
    decode_request_document,
    json_safe_errors,
    summarize_validation_error,
    wire_time,
)
from shoal.protocol.signing import Forbidden, Unauthorized, verify_document

from .journal import JournalEntry, RequestJournal
from .trust import TrustEntry, TrustStore

Selectable = Callable[[], dict[str, str]]
"""This host's labels and selectable facts, computed only when a broadcast needs them."""


@dataclass(slots=True)
class Caller:
    """Who sent a request, as far as it is known (filled in while admitting it)."""

    signer: TrustEntry | None = None
    key: str | None = None
    request: Request | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """A request that passed every check, with who sent it."""

    request: Request
    verb: Verb
    args: BaseModel
    signer: TrustEntry | None
    key: str | None


@dataclass(frozen=True, slots=True)
class Gate:
    """What admission checks against, apart from the message and the clock."""

    subjects: Subjects
    host_id: str
    selectable: Selectable
    trust: TrustStore | None
    """None on an insecure agent: unsigned requests are accepted."""
    journal: RequestJournal
    max_clock_skew: float


def admit(gate: Gate, subject: str, data: bytes, now: datetime, caller: Caller) -> Admission | None:
    """The admitted request, None for a broadcast meant for other hosts, or a typed error.

    Order: shape, subject and target, signature and trust, time window, verb and
    arguments, role, then the journal (at most once per host). ``caller`` is filled
    in as far as the checks got, for the audit record of a refusal.
    """
    request, document = decode_request_document(data)
    caller.request = request
    verb_token = gate.subjects.verb_of(subject)
    if request.verb != verb_token:
        raise BadRequest(
            f"request verb {request.verb!r} does not match subject verb {verb_token!r}"
        )
    if subject == gate.subjects.broadcast(verb_token):
        if request.target.selector is None:
            raise BadRequest("a broadcast request must carry a selector")
        if not request.target.matches(gate.host_id, gate.selectable()):
            return None
    elif request.target.host != gate.host_id:
        raise BadRequest(f"request for host {request.target.host!r} arrived at {gate.host_id!r}")
    signer, key = authenticate(gate, document, caller)
    check_window(request, now, gate.max_clock_skew)
    try:
        verb = Verb(request.verb)
    except ValueError:
        raise UnknownVerb(
            f"unknown verb {request.verb!r}",
            detail={"known": sorted(str(v) for v in VERBS)},
        ) from None
    args = validate_args(verb, request.args)
    needed = required_role(verb, args)
    if signer is not None and not signer.role.allows(needed):
        raise Forbidden(
            f"key {signer.name!r} has role {signer.role}; {verb} here needs {needed}",
            detail={"role": str(signer.role), "needed": str(needed)},
        )
    earlier = gate.journal.get(request.id)
    if earlier is not None:
        raise Replayed(
            f"request {request.id} was already received ({earlier.state}); "
            "a request runs at most once",
            detail={"state": earlier.state, "ok": earlier.ok},
        )
    gate.journal.start(
        JournalEntry(
            id=request.id,
            verb=str(verb),
            expires=request.expires_at + timedelta(seconds=gate.max_clock_skew),
            state="running",
            started_at=now,
        ),
        durable=VERBS[verb].mutating,
    )
    return Admission(request, verb, args, signer, key)


def validate_args(verb: Verb, args: dict[str, Any]) -> BaseModel:
    """The verb's typed arguments; BadRequest with machine-readable ``detail.errors`` if invalid."""
    try:
        return VERBS[verb].args.model_validate(args)
    except ValidationError as exc:
        raise BadRequest(
            f"invalid arguments for {verb}: {summarize_validation_error(exc)}",
            detail={"errors": json_safe_errors(exc)[:10]},
        ) from exc


def authenticate(
    gate: Gate, document: dict[str, Any], caller: Caller
) -> tuple[TrustEntry | None, str | None]:
    """The trusted signer of a request; (None, None) on an insecure agent."""
    if gate.trust is None:
        return None, None
    key = verify_document(document)
    caller.key = key
    entry = gate.trust.lookup(key)
    caller.signer = entry
    if entry is None:
        raise Unauthorized(f"key {key} is not trusted by host {gate.host_id}", detail={"key": key})
    return entry, key


def check_window(request: Request, now: datetime, max_clock_skew: float) -> None:
    """Expired unless ``now`` is within the request's time window, give or take the skew."""
    skew = timedelta(seconds=max_clock_skew)
    if now > request.expires_at + skew:
        late = (now - request.expires_at).total_seconds()
        raise Expired(
            f"request expired {late:.0f}s ago (issued {wire_time(request.issued_at)}, "
            f"ttl {request.ttl:g}s, this host's clock {wire_time(now)}, "
            f"allowed clock skew {max_clock_skew:g}s)",
            detail={"expires_at": wire_time(request.expires_at), "agent_time": wire_time(now)},
        )
    if request.issued_at > now + skew:
        ahead = (request.issued_at - now).total_seconds()
        raise Expired(
            f"request issued {ahead:.0f}s in the future by this host's clock "
            f"({wire_time(now)}); allowed clock skew {max_clock_skew:g}s: check the clocks",
            detail={"issued_at": wire_time(request.issued_at), "agent_time": wire_time(now)},
        )


def is_for_host(
    subjects: Subjects, subject: str, data: bytes, host_id: str, selectable: Selectable
) -> bool:
    """A direct request is; a broadcast only if its selector matches this host."""
    verb = subjects.verb_of(subject)
    if subject != subjects.broadcast(verb):
        return True
    try:
        request = decode_request(data)
    except ShoalError:
        return False
    return request.target.matches(host_id, selectable())


def verb_label(subjects: Subjects, subject: str, admission: Admission | None) -> str:
    """The verb for metrics: a known verb, else "unknown" (senders choose subjects)."""
    if admission is not None:
        return str(admission.verb)
    token = subjects.verb_of(subject)
    return token if token in VERBS else "unknown"
