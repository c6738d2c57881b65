"""``shoal enroll`` and ``shoal audit``."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from shoal.protocol import AuditRecord, InvalidHostId, Role, Subjects, utcnow

from ..fleet import DEFAULT_TIMEOUT
from ..keys import KeyStore, SigningKeyError
from .common import (
    HostsOpt,
    JsonOpt,
    ServerOpt,
    TimeoutOpt,
    build_selector,
    err,
    global_options,
    make_fleet,
    out,
    parse_duration,
    print_json,
    run,
    usage_error,
)


def enroll(
    ctx: typer.Context,
    host_id: Annotated[
        str | None, typer.Argument(metavar="[HOST]", help="Host id of the new host.")
    ] = None,
    controller: Annotated[
        str | None,
        typer.Option(
            "--controller",
            metavar="NAME",
            help="Instead of a host: a NATS user for a controller (requests, JetStream).",
        ),
    ] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--trust-key",
            metavar="NAME",
            help="Key to trust (repeatable). \\[default: the default key]",
        ),
    ] = None,
    role: Annotated[Role, typer.Option("--role", help="Role of the trusted keys.")] = Role.ADMIN,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Write trust.toml, agent.nk and nats-user.conf into DIR."),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Print what a new host needs: its trust file and a NATS user limited to its subjects.

    The NATS user is an nkey user whose permissions allow only that host's own
    subjects; add the printed entry to the server's authorization users and give
    the agent the seed (--nkey). Without --out the seed is printed: keep it secret.
    """
    if controller is not None:
        enroll_controller(ctx, controller, out_dir, json_)
        return
    if host_id is None:
        usage_error("give a HOST to enroll, or --controller NAME")
    store = KeyStore()
    try:
        default = store.default_name()
        names = key or ([default] if default is not None else [])
        if not names:
            usage_error("no signing key yet: create one with 'shoal keys new NAME'")
        keys = [(n, store.load(n).public_key, role) for n in names]
        from ..enroll import enroll_host  # loads the agent's trust module

        enrollment = enroll_host(Subjects(global_options(ctx).prefix), host_id, keys)
    except SigningKeyError as exc:
        usage_error(exc.message)
    except InvalidHostId as exc:
        usage_error(exc.message)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "trust.toml").write_text(enrollment.trust_toml)
        write_secret(out_dir / "agent.nk", enrollment.nats_seed)
        (out_dir / "nats-user.conf").write_text(enrollment.nats_user + "\n")
        err.say(f"wrote {out_dir}/trust.toml, agent.nk (secret) and nats-user.conf")
    if json_:
        print_json(
            {
                "host_id": host_id,
                "trust_toml": enrollment.trust_toml,
                "nats_public_key": enrollment.nats_public_key,
                "nats_user": enrollment.nats_user,
                **({"nats_seed": enrollment.nats_seed.decode()} if out_dir is None else {}),
            }
        )
        return
    if out_dir is None:
        out.print(f"# 1. On {host_id}: the trust file (--trust, env SHOAL_TRUST)", markup=False)
        out.print(enrollment.trust_toml, markup=False)
        out.print(
            f"# 2. On {host_id}: the agent's NATS nkey seed (--nkey FILE, mode 0600)", markup=False
        )
        out.print(enrollment.nats_seed.decode(), markup=False)
        out.print(
            "\n# 3. On the NATS server: add to authorization { users = [ ... ] }", markup=False
        )
        out.print(enrollment.nats_user, markup=False)


def enroll_controller(ctx: typer.Context, name: str, out_dir: Path | None, json_: bool) -> None:
    from ..enroll import controller_user

    public, seed, entry = controller_user(Subjects(global_options(ctx).prefix), name)
    if out_dir is not None:
        write_secret(out_dir / "controller.nk", seed)
        (out_dir / "nats-user.conf").write_text(entry + "\n")
        err.say(f"wrote {out_dir}/controller.nk (secret) and nats-user.conf")
    if json_:
        doc = {"name": name, "nats_public_key": public, "nats_user": entry}
        if out_dir is None:
            doc["nats_seed"] = seed.decode()
        print_json(doc)
    elif out_dir is None:
        out.print(f"# 1. For the controller {name}: its NATS nkey seed (--nkey FILE)", markup=False)
        out.print(seed.decode(), markup=False)
        out.print(
            "\n# 2. On the NATS server: add to authorization { users = [ ... ] }", markup=False
        )
        out.print(entry, markup=False)


def write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with a looser mode
    with os.fdopen(fd, "wb") as f:
        f.write(data + b"\n")


def audit(
    ctx: typer.Context,
    host: HostsOpt = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DURATION", help="Only records newer than this, e.g. 1h."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many records.")] = 1000,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Read the audit trail: every request decision of the selected hosts."""
    target = build_selector(host, None)
    start = None
    if since is not None:
        try:
            start = utcnow() - timedelta(seconds=parse_duration(since))
        except ValueError as exc:
            usage_error(str(exc))
    fleet = make_fleet(ctx, server, timeout)

    async def work() -> list[AuditRecord]:
        async with fleet:
            return await fleet.audit(target, start, limit)

    records = run(work())
    if json_:
        print_json({"records": [r.model_dump(mode="json") for r in records]})
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TIME", "HOST", "VERB", "SIGNER", "DECISION", "OUTCOME", "REASON"):
        table.add_column(column, no_wrap=column != "REASON")
    for r in records:
        decision = (
            Text("accepted", style="green")
            if r.decision == "accepted"
            else Text("refused", style="red")
        )
        outcome = r.outcome or (r.code or "")
        if r.decision == "accepted" and r.code:
            outcome = f"error: {r.code}"
        table.add_row(
            r.at.isoformat(timespec="seconds"),
            r.host,
            r.verb,
            r.signer or "-",
            decision,
            outcome,
            r.reason[:80],
        )
    out.print(table)
    err.print(f"{len(records)} records")
