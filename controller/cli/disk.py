"""``shoal df`` and ``shoal prune``: disk usage and safe, fleet-wide cleanup."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table
from rich.text import Text

from shoal.protocol import (
    SYSTEM_PRUNE_KINDS,
    DfResult,
    DiskKind,
    Progress,
    PruneArgs,
    PruneKind,
    PruneResult,
    Reply,
    Selector,
)
from shoal.protocol.envelope import summarize_validation_error

from ..fleet import DEFAULT_TIMEOUT, Fleet
from ..result import ExitCode, FleetResult
from ..targeting import Limit
from .common import (
    HostsOpt,
    JsonOpt,
    LabelsOpt,
    LimitOpt,
    RetriesOpt,
    ServerOpt,
    TimeoutOpt,
    ask_fleet,
    build_limit,
    build_selector,
    err,
    error,
    finish,
    human_size,
    make_fleet,
    out,
    parse_duration,
    print_json,
    render_footer,
    run,
    show_result,
    usage_error,
)
from .shared import YesOpt

KIND_NAMES = [k.value for k in PruneKind] + ["system"]


# --- df -------------------------------------------------------------------------------


def df_totals(result: FleetResult[DfResult]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for reply in result.replies.values():
        for kind, usage in reply.usage.items():
            t = totals.setdefault(str(kind), {"count": 0, "active": 0, "size": 0, "reclaimable": 0})
            t["count"] += usage.count
            t["active"] += usage.active
            t["size"] += usage.size
            t["reclaimable"] += usage.reclaimable
    return totals


def render_df(result: FleetResult[DfResult]) -> None:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"):
        table.add_column(column, no_wrap=True, justify="right" if column != "HOST" else "left")
    table.columns[1].justify = "left"

    def pct(reclaimable: int, size: int) -> str:
        return f"{human_size(reclaimable)} ({100 * reclaimable // size}%)" if size else "0B"

    for host, reply in sorted(result.replies.items()):
        for kind in DiskKind:
            u = reply.usage.get(kind)
            if u is None:
                continue
            table.add_row(
                host,
                str(kind),
                str(u.count),
                str(u.active),
                human_size(u.size),
                pct(u.reclaimable, u.size),
            )
    totals = df_totals(result)
    if len(result.replies) > 1:
        table.add_section()
        for name, t in totals.items():
            table.add_row(
                Text("fleet", style="bold"),
                name,
                str(t["count"]),
                str(t["active"]),
                human_size(t["size"]),
                pct(t["reclaimable"], t["size"]),
            )
    out.print(table)


def df(
    ctx: typer.Context,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    retries: RetriesOpt = 0,
    json_: JsonOpt = False,
) -> None:
    """Disk usage per host and for the fleet: images, containers, volumes, build cache."""
    target = build_selector(host, selector)
    sample = build_limit(limit)
    result = ask_fleet(
        ctx, server, timeout, lambda fleet: fleet.df(selector=target, limit=sample, retries=retries)
    )
    show_result(
        result, render_df, json_=json_, document={**result.to_json(), "totals": df_totals(result)}
    )


# --- prune ----------------------------------------------------------------------------


def prune_totals(result: FleetResult[PruneResult]) -> dict[str, Any]:
    kinds: dict[str, dict[str, int]] = {}
    for reply in result.replies.values():
        for kind, outcome in reply.kinds.items():
            t = kinds.setdefault(str(kind), {"removed": 0, "failed": 0, "reclaimed": 0})
            t["removed"] += len(outcome.removed)
            t["failed"] += len(outcome.failed)
            t["reclaimed"] += outcome.reclaimed
    return {
        "kinds": kinds,
        "removed": sum(t["removed"] for t in kinds.values()),
        "failed": sum(t["failed"] for t in kinds.values()),
        "reclaimed": sum(t["reclaimed"] for t in kinds.values()),
        "protected": sum(r.protected for r in result.replies.values()),
    }


def render_prune_items(result: FleetResult[PruneResult]) -> None:
    """Every object, per host: what a dry run would remove."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "KIND", "ID", "NAME", "SIZE"):
        table.add_column(column, no_wrap=True, justify="right" if column == "SIZE" else "left")
    for host, reply in sorted(result.replies.items()):
        for kind, outcome in reply.kinds.items():
            for item in outcome.removed:
                name = ", ".join(item.tags) if item.tags else item.name
                short = item.id.removeprefix("sha256:")[:12]
                table.add_row(host, str(kind), short, name or "<none>", human_size(item.size))
    out.print(table)


def render_prune_summary(result: FleetResult[PruneResult]) -> None:
    dry = any(r.dry_run for r in result.replies.values())
    verb = "WOULD REMOVE" if dry else "REMOVED"
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("HOST", "KIND", verb, "FAILED", "RECLAIMED" if not dry else "WOULD RECLAIM"):
        table.add_column(
            column, no_wrap=True, justify="left" if column in ("HOST", "KIND") else "right"
        )
    for host, reply in sorted(result.replies.items()):
        for kind, outcome in reply.kinds.items():
            table.add_row(
                host,
                str(kind) + (f" (skipped: {outcome.skipped})" if outcome.skipped else ""),
                str(len(outcome.removed)),
                str(len(outcome.failed)),
                human_size(outcome.reclaimed),
            )
    totals = prune_totals(result)
    table.add_section()
    table.add_row(
        Text("total", style="bold"),
        "",
        str(totals["removed"]),
        str(totals["failed"]),
        Text(human_size(totals["reclaimed"]), style="bold"),
    )
    out.print(table)
    for host, reply in sorted(result.replies.items()):
        for kind, outcome in reply.kinds.items():
            for failure in outcome.failed:
                err.say(
                    ("failed", "red"),
                    f" {host} {kind} {failure.name or failure.id[:12]}: "
                    f"{failure.code}: {failure.message}",
                )
    if totals["protected"]:
        err.print(
            f"{totals['protected']} protected objects kept (shoal.keep, keep patterns, services)"
        )


def build_prune_args(
    kinds: list[str] | None,
    until: str | None,
    filters: list[str] | None,
    all_images: bool,
    volumes_all: bool,
    dry_run: bool,
) -> PruneArgs:
    chosen: list[PruneKind] = []
    for name in kinds or ["system"]:
        if name == "system":
            chosen.extend(SYSTEM_PRUNE_KINDS)
        elif name in KIND_NAMES:
            chosen.append(PruneKind(name))
        else:
            usage_error(f"unknown kind {name!r}: use {', '.join(KIND_NAMES)}")
    if volumes_all and PruneKind.VOLUMES not in chosen:
        usage_error(
            "--volumes-all only applies with the volumes kind: shoal prune volumes --volumes-all"
        )
    labels: list[str] = []
    seconds = None
    for item in filters or []:
        key, sep, value = item.partition("=")
        if key == "label" and sep and value:
            labels.append(value)
        elif key == "label!" and sep and value:
            k, has_value, v = value.partition("=")
            labels.append(f"{k}!={v}" if has_value else f"!{k}")
        elif key == "until" and sep and until is None:
            until = value
        else:
            usage_error(f"invalid filter {item!r}: use label=K=V, label!=K=V or until=DURATION")
    if until is not None:
        try:
            seconds = parse_duration(until)
        except ValueError as exc:
            usage_error(str(exc))
    try:
        return PruneArgs(
            kinds=tuple(chosen),
            until=seconds,
            labels=tuple(labels),
            all_images=all_images,
            volumes_all=volumes_all,
            dry_run=dry_run,
        )
    except ValidationError as exc:
        usage_error(summarize_validation_error(exc))


class PruneProgress:
    """Live status while hosts work: who is done, what the others are removing."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.latest: dict[str, str] = {}
        self.status: Any = None

    def on_progress(self, progress: Progress) -> None:
        count = f" {progress.current:.0f}/{progress.total:.0f}" if progress.total else ""
        self.latest[progress.host] = f"{progress.phase}{count}: {progress.message}"
        self._update()

    def on_reply(self, reply: Reply) -> None:
        self.done += 1
        self.latest.pop(reply.host, None)
        self._update()

    def _update(self) -> None:
        if self.status is None:
            return
        working = "; ".join(f"{h} {m}" for h, m in sorted(self.latest.items())[:3])
        self.status.update(f"pruning: {self.done}/{self.total} hosts done {working}")


async def run_prune(
    fleet: Fleet, args: PruneArgs, target: Selector, sample: Limit | None, show: bool
) -> FleetResult[PruneResult]:
    async with fleet:
        if not show:
            return await fleet.prune(args, selector=target, limit=sample)
        targets = await fleet.resolve(target, sample)
        progress = PruneProgress(len(targets.online))
        with err.status("pruning…") as status:
            progress.status = status
            return await fleet.prune(
                args,
                selector=Selector(hosts=tuple(targets.all)) if targets.all else target,
                limit=None if targets.all else sample,
                on_progress=progress.on_progress,
                on_reply=progress.on_reply,
            )


def prune(
    ctx: typer.Context,
    kinds: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[KIND]...",
            help="containers, images, volumes, networks, build-cache or system "
            "(containers, images, networks and build cache). \\[default: system]",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until", metavar="DURATION", help="Only what was created before, e.g. 24h, 7d, 90m."
        ),
    ] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", metavar="label=K=V|label!=K=V", help="Label filter (repeatable)."),
    ] = None,
    all_images: Annotated[
        bool,
        typer.Option(
            "--all-images", "-a", help="Remove all unused images, not only dangling ones."
        ),
    ] = False,
    volumes_all: Annotated[
        bool,
        typer.Option("--volumes-all", help="With volumes: named volumes too, not only anonymous."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show exactly what would be removed; remove nothing.")
    ] = False,
    yes: YesOpt = False,
    host: HostsOpt = None,
    selector: LabelsOpt = None,
    limit: LimitOpt = None,
    server: ServerOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT,
    json_: JsonOpt = False,
) -> None:
    """Remove unused containers, images, networks, build cache (and volumes if named).

    Never removes anything labelled shoal.keep=true, the agent's keep patterns, a
    deployed service's containers, or the images its current and previous
    revisions need. Without --yes it shows a dry run first and asks; without a
    terminal it refuses unless given --yes.
    """
    args = build_prune_args(kinds, until, filter_, all_images, volumes_all, dry_run)
    target = build_selector(host, selector)
    sample = build_limit(limit)
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    if not dry_run and not yes and not interactive:
        error(
            "refusing to prune without --yes when not on a terminal "
            "(use --dry-run to see what would be removed)"
        )
        raise typer.Exit(int(ExitCode.USAGE))
    show = interactive and not json_

    if not dry_run and not yes:
        preview = run(
            run_prune(
                make_fleet(ctx, server, timeout),
                args.model_copy(update={"dry_run": True}),
                target,
                sample,
                show,
            )
        )
        if not json_:  # with --json, stdout carries only the final document
            render_prune_items(preview)
            render_prune_summary(preview)
        render_footer(preview)
        if not preview.replies:
            finish(preview)
        totals = prune_totals(preview)
        if totals["removed"] == 0:
            err.print("nothing to remove")
            finish(preview)
        if not typer.confirm(
            f"Remove {totals['removed']} objects on {len(preview.replies)} hosts, "
            f"reclaiming {human_size(totals['reclaimed'])}?",
            default=False,
            err=True,
        ):
            err.print("aborted; nothing removed")
            raise typer.Exit(int(ExitCode.OK))
        target = Selector(hosts=tuple(sorted(preview.replies)))
        sample = None

    result = run(run_prune(make_fleet(ctx, server, timeout), args, target, sample, show))
    if json_:
        print_json({**result.to_json(), "totals": prune_totals(result)})
    else:
        if dry_run:
            render_prune_items(result)
        render_prune_summary(result)
        render_footer(result)
    finish(result)
