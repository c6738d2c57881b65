"""What a new host needs: its trust file and a least-privilege NATS user."""

from __future__ import annotations

import json
from dataclasses import dataclass

from shoal.protocol import Role, Subjects, nkey, validate_host_id
from shoal.protocol.trust import TrustEntry, render_trust

RESPONSE_LIMIT = {"max": 100_000, "expires": "1h"}
"""How many messages an agent may send to a requester's inbox, and for how long:
progress messages and reply chunks stream, so one response is not enough."""


def agent_permissions(subjects: Subjects, host_id: str) -> dict[str, object]:
    """NATS permissions for one host's agent: its own subjects and nothing else."""
    validate_host_id(host_id)
    return {
        "publish": {
            "allow": [
                subjects.heartbeat(host_id),
                f"{subjects.prefix}.events.{host_id}.>",
                subjects.audit(host_id),
                subjects.host(host_id, "ping"),  # its own duplicate-id check at start
            ]
        },
        "subscribe": {
            "allow": [
                subjects.host_all_verbs(host_id),
                subjects.broadcast_all_verbs(),
                f"{subjects.agent_inbox_prefix(host_id)}.>",
            ]
        },
        "allow_responses": dict(RESPONSE_LIMIT),
    }


def controller_permissions(subjects: Subjects) -> dict[str, object]:
    """NATS permissions for a controller: requests, its inboxes, the fleet's streams."""
    p = subjects.prefix
    return {
        "publish": {"allow": [f"{p}.host.>", f"{p}.all.>", "$JS.API.>", "_INBOX.>"]},
        "subscribe": {"allow": ["_INBOX.>", f"{p}.hb.>", f"{p}.events.>", f"{p}.audit.>"]},
    }


def new_nkey_user() -> tuple[str, bytes]:
    """A fresh NATS nkey user: (public key, seed)."""
    pair = nkey.KeyPair.generate(nkey.PREFIX_BYTE_USER)
    return pair.public_key_text, pair.seed_text.encode()


def nats_user_entry(public_key: str, permissions: dict[str, object], comment: str) -> str:
    """One entry for a nats-server ``authorization { users = [...] }`` block."""
    body = json.dumps({"nkey": public_key, "permissions": permissions}, indent=2)
    return f"# {comment}\n{body}"


@dataclass(frozen=True, slots=True)
class Enrollment:
    host_id: str
    trust_toml: str
    nats_public_key: str
    nats_seed: bytes
    nats_user: str
    inbox_prefix: str


def enroll_host(subjects: Subjects, host_id: str, keys: list[tuple[str, str, Role]]) -> Enrollment:
    """Trust file text and a NATS user for ``host_id``; ``keys`` is (name, public key, role)."""
    validate_host_id(host_id)
    trust = render_trust([TrustEntry(name=name, key=key, role=role) for name, key, role in keys])
    public, seed = new_nkey_user()
    entry = nats_user_entry(
        public, agent_permissions(subjects, host_id), f"shoal agent for host {host_id}"
    )
    return Enrollment(host_id, trust, public, seed, entry, subjects.agent_inbox_prefix(host_id))


def controller_user(subjects: Subjects, name: str) -> tuple[str, bytes, str]:
    """A NATS nkey user for a controller: (public key, seed, users.conf entry)."""
    public, seed = new_nkey_user()
    entry = nats_user_entry(public, controller_permissions(subjects), f"shoal controller {name}")
    return public, seed, entry


def render_users_conf(entries: list[str]) -> str:
    """A users.conf for compose/nats/auth.conf from user entries."""
    body = ",\n".join(entries)
    return f"authorization {{\n  users = [\n{body}\n  ]\n}}\n"
