"""``audience-sync status``: the dashboard's facts for a terminal, or JSON for scripts."""

from __future__ import annotations

import typing as t
from dataclasses import asdict
from datetime import UTC, datetime

import sqlalchemy as sa

from audience_sync.admin import overview
from audience_sync.admin.feeds import feed_platforms
from audience_sync.runtime import Runtime
from audience_sync.store import reads
from audience_sync.store.engine import read_only

CONNECTIONS_SHOWN = 100
AUDIENCES_SHOWN = 20


def collect(runtime: Runtime, *, now: float) -> dict[str, t.Any]:
    """Status, connections with their first audiences, feeds and the latest job runs."""
    state = overview.status(runtime, now=now)
    body: dict[str, t.Any] = {"status": state, "connections": [], "feeds": [], "jobs": []}
    if "backlog" not in state:  # the database did not answer
        return body
    try:
        with read_only(runtime.engine) as conn:
            for c in reads.list_connections(conn, limit=CONNECTIONS_SHOWN):
                row = asdict(c)
                row["audience_list"] = [
                    asdict(a)
                    for a in reads.list_audiences(conn, c.account_id, limit=AUDIENCES_SHOWN)
                ]
                body["connections"].append(row)
            body["feeds"] = [
                asdict(f) for f in reads.feed_states(conn, feed_platforms(runtime.settings))
            ]
            body["jobs"] = [asdict(j) for j in reads.job_runs(conn, limit=10)]
    except sa.exc.SQLAlchemyError as exc:
        state["healthy"] = False
        state.setdefault("problems", []).append(f"database error ({type(exc).__name__})")
    return body


def render(summary: t.Mapping[str, t.Any]) -> None:
    """Print the summary as a few small tables (plain text when not on a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    state = summary["status"]
    healthy = state.get("healthy")
    console.print(
        f"[bold]audience-sync {state.get('version', '')}[/bold] on {state.get('database', '?')}: "
        + ("[green]healthy[/green]" if healthy else "[red]needs attention[/red]")
    )
    for problem in state.get("problems", []):
        console.print(f"  - {problem}")
    if "backlog" not in state:
        return
    backlog = state["backlog"]
    age = backlog.get("oldest_pending_age_s")
    facts = Table(show_header=False, box=None, pad_edge=False)
    facts.add_column(style="dim")
    facts.add_column(justify="right")
    facts.add_row(
        "connections", ", ".join(f"{n} {k}" for k, n in state["connections"].items()) or "0"
    )
    facts.add_row("active audiences", f"{state['audiences']:,}")
    facts.add_row("users / memberships", f"{state['users']:,} / {state['memberships']:,}")
    facts.add_row(
        "backlog pending", f"{backlog['pending']:,}" + (f" (oldest {age:.0f} s)" if age else "")
    )
    facts.add_row("dead letters", f"{backlog['dead']:,}")
    waiting_age = backlog.get("firehose_oldest_age_s")
    facts.add_row(
        "firehose messages to apply",
        f"{backlog.get('firehose_waiting', 0):,}"
        + (f" (oldest {waiting_age:.0f} s)" if waiting_age else ""),
    )
    facts.add_row("workspaces suspended", str(state["workspaces_suspended"]))
    facts.add_row(
        "data points today",
        f"{state['datapoints_today']:,} (resend-everything: {state['datapoints_full_today']:,})",
    )
    console.print(facts)

    if state["failures_today"]:
        failures = Table(title="failures today", title_justify="left")
        failures.add_column("reason")
        failures.add_column("count", justify="right")
        for reason, n in sorted(state["failures_today"].items(), key=lambda kv: -kv[1]):
            failures.add_row(reason, f"{n:,}")
        console.print(failures)

    connections = Table(title="connections", title_justify="left")
    for name in ("account", "state", "Braze workspace", "audiences", "users", "members"):
        connections.add_column(
            name, justify="left" if name in ("state", "Braze workspace") else "right"
        )
    audiences = Table(title="audiences", title_justify="left")
    for name in ("account", "audience", "name", "state", "members", "data points"):
        audiences.add_column(
            name, justify="right" if name in ("members", "data points") else "left"
        )
    for c in summary["connections"]:
        workspace = (
            f"#{c['workspace_id']} {c['workspace_state']}" if c["workspace_id"] is not None else "-"
        )
        connections.add_row(
            str(c["account_id"]),
            c["state"],
            workspace,
            f"{c['audiences']:,}",
            f"{c['users']:,}",
            f"{c['members']:,}",
        )
        for a in c["audience_list"]:
            audiences.add_row(
                str(c["account_id"]),
                str(a["audience_id"]),
                a["name"],
                a["state"],
                f"{a['members']:,}",
                f"{a['datapoints']:,}",
            )
    console.print(connections)
    if summary["connections"]:
        console.print(audiences)

    feeds = Table(title="Currents feeds", title_justify="left")
    for name in ("feed", "platform", "state", "backlog"):
        feeds.add_column(name)
    for f in summary["feeds"]:
        feeds.add_row(f["name"], f["platform"], f["state"], f"{f['backlog']:,}")
    if not summary["feeds"]:
        feeds.add_row("(none reported)", "", "", "")
    console.print(feeds)

    jobs = Table(title="latest job runs", title_justify="left")
    for name in ("job", "state", "started"):
        jobs.add_column(name)
    for j in summary["jobs"]:
        started = datetime.fromtimestamp(j["started_at"], tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
        jobs.add_row(j["job"], j["state"], started)
    if not summary["jobs"]:
        jobs.add_row("(none recorded)", "", "")
    console.print(jobs)
