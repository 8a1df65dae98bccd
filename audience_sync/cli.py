"""The ``audience-sync`` command line (SPEC §1). Exit codes: 0 success, 2 usage or
configuration error, 1 runtime failure."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import typing as t
from collections.abc import Iterator

import click

from audience_sync.errors import ConfigValidationError
from audience_sync.settings import Settings, load_settings

logger = logging.getLogger(__name__)

CONFIG_HELP = (
    "TOML configuration file. Without it, built-in defaults (config/default.toml). Any key can "
    "also be set with AUDIENCE_SYNC_<SECTION>__<KEY>, e.g. AUDIENCE_SYNC_BRAZE__DRY_RUN=true "
    "(lists comma-separated)."
)
EPILOG = (
    "Exit codes: 0 success, 1 runtime failure (or, for status, something needs attention), "
    "2 usage or configuration error. Run `audience-sync COMMAND --help` for each command."
)


class Context:
    """Lazily loaded settings shared by the subcommands."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """Validated settings; a configuration error exits with status 2."""
        if self._settings is None:
            try:
                self._settings = load_settings(self.config_path)
            except ConfigValidationError as exc:
                click.echo(str(exc), err=True)
                sys.exit(2)
        return self._settings


pass_context = click.make_pass_decorator(Context)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    envvar="AUDIENCE_SYNC_CONFIG",
    show_envvar=True,
    help=CONFIG_HELP,
)
@click.version_option(package_name="audience-sync")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """audience-sync: mParticle audiences to Braze, Braze Currents to mParticle."""
    ctx.obj = Context(config_path)


def _setup(ctx: Context) -> Settings:
    from audience_sync.logs import configure_logging

    settings = ctx.settings
    configure_logging(settings.get("log.level"), secrets=settings.secret_values())
    return settings


def _require_current_schema(runtime: t.Any) -> None:
    from audience_sync.store.migrate import is_current

    if not is_current(runtime.engine):
        click.echo("the database schema is not current: run `audience-sync db upgrade`", err=True)
        sys.exit(1)


@main.command("run")
@pass_context
def run_command(ctx: Context) -> None:
    """Run everything in one process: HTTP server, delivery workers, scheduler (SQLite default)."""
    from audience_sync.process import run_all

    settings = _setup(ctx)
    sys.exit(
        run_all(settings, http=True, senders=True, jobs=True, check_schema=_require_current_schema)
    )


@main.command("serve")
@pass_context
def serve_command(ctx: Context) -> None:
    """Run the HTTP server only (production: gunicorn audience_sync.wsgi:app)."""
    from audience_sync.process import run_all

    settings = _setup(ctx)
    sys.exit(run_all(settings, http=True, senders=False, check_schema=_require_current_schema))


@main.command("worker")
@pass_context
def worker_command(ctx: Context) -> None:
    """Run delivery workers only (several may run against PostgreSQL)."""
    from audience_sync.process import run_all

    settings = _setup(ctx)
    if settings.get("database.url").startswith("sqlite"):
        logger.warning(
            "worker on SQLite: run only one sending process per database file",
            extra={"action": "sqlite_single_sender"},
        )
    sys.exit(run_all(settings, http=False, senders=True, check_schema=_require_current_schema))


@main.command("scheduler")
@pass_context
def scheduler_command(ctx: Context) -> None:
    """Run the scheduled jobs only (any number of these share the jobs through database leases)."""
    from audience_sync.process import run_all

    settings = _setup(ctx)
    sys.exit(
        run_all(
            settings, http=False, senders=False, jobs=True, check_schema=_require_current_schema
        )
    )


@main.group("jobs")
def jobs_group() -> None:
    """Scheduled jobs."""


@jobs_group.command("run")
@click.argument("name")
@pass_context
def jobs_run_command(ctx: Context, name: str) -> None:
    """Run one job now (under its lease), and print its counts."""
    from audience_sync.jobs.commands import run_now

    settings = _setup(ctx)
    sys.exit(run_now(settings, name, echo=click.echo, check_schema=_require_current_schema))


@main.command("reconcile")
@click.option("--connection", "account_id", type=int, help="Only this mParticle account id.")
@click.option("--dry-run", is_flag=True, help="Only report the drift; write nothing.")
@pass_context
def reconcile_command(ctx: Context, account_id: int | None, dry_run: bool) -> None:
    """Audit what Braze holds for every user now, and queue the repairs (SPEC §7)."""
    from audience_sync.jobs.commands import reconcile

    settings = _setup(ctx)
    sys.exit(
        reconcile(
            settings,
            account_id=account_id,
            dry_run=dry_run,
            echo=click.echo,
            check_schema=_require_current_schema,
        )
    )


@main.command("replay")
@click.option(
    "--dead",
    is_flag=True,
    default=True,
    help="Re-queue dead-lettered users (the default and only kind today).",
)
@click.option(
    "--connection",
    "account_id",
    type=int,
    metavar="ACCOUNT_ID",
    help="Only the dead letters of this mParticle account id (default: all connections).",
)
@click.option(
    "--feed",
    "feed",
    metavar="NAME",
    help="Re-queue the dead-lettered Currents events of this mParticle feed instead.",
)
@pass_context
def replay_command(ctx: Context, dead: bool, account_id: int | None, feed: str | None) -> None:
    """Re-queue dead-lettered deliveries with a fresh attempt budget."""
    import time

    from audience_sync.runtime import Runtime
    from audience_sync.store import outbox
    from audience_sync.store.connections import workspace_ids_of_account

    settings = _setup(ctx)
    runtime = Runtime.from_settings(settings)
    _require_current_schema(runtime)
    if feed is not None:
        from audience_sync.currents.maintenance import currents_replay

        count = currents_replay(runtime.engine, feed=feed)
        click.echo(f"re-queued {count} dead-lettered Currents event(s) of feed {feed}")
        return
    with runtime.engine.begin() as conn:
        workspace_ids = None
        if account_id is not None:
            workspace_ids = workspace_ids_of_account(conn, account_id)
        count = outbox.replay(conn, now=time.time(), workspace_ids=workspace_ids)
    click.echo(f"re-queued {count} dead-lettered user(s)")


@main.group("currents")
def currents_group() -> None:
    """Braze Currents commands."""


@currents_group.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@pass_context
def currents_import_command(ctx: Context, paths: tuple[str, ...]) -> None:
    """Import Braze Currents Avro files or directory trees (each file once)."""
    import json

    from audience_sync.currents.importer import find_files, import_paths
    from audience_sync.currents.service import CurrentsConfig
    from audience_sync.progress import progress
    from audience_sync.runtime import Runtime

    settings = _setup(ctx)
    runtime = Runtime.from_settings(settings)
    _require_current_schema(runtime)
    config = CurrentsConfig.from_settings(settings)
    total = sum(1 for _ in find_files(paths))
    # A bar on a terminal; off it none is drawn, and each file is a JSON log line
    # (currents_file_imported / _failed).
    with _collector_for_import(), progress("importing files", total=total) as advance:
        summary = import_paths(runtime.engine, config, paths, on_file=lambda _r: advance(1))
    for path, error in summary.failed:
        click.echo(f"failed: {path}: {error}", err=True)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary.skipped.items())) or "none"
    click.echo(
        f"files {summary.files} (imported {summary.imported}, already imported "
        f"{summary.already_imported}, failed {len(summary.failed)}); events {summary.events}; "
        f"forwarded {summary.forwarded}; skipped: {skipped}"
    )
    if not sys.stdout.isatty():
        click.echo(json.dumps(summary.to_dict(), sort_keys=True))
    runtime.engine.dispose()
    if summary.failed:
        sys.exit(1)


@contextlib.contextmanager
def _collector_for_import() -> Iterator[None]:
    """The garbage collector tuned for a bulk import, and restored after it.

    What start-up built lives as long as the command, so it is frozen out of the collections
    (every full collection scanned it again while a file's records were alive: ~3 µs/event);
    most objects a file creates live until its transaction, so the young generation is
    collected every 100,000 allocations rather than 700, which only scanned them over and over
    (~2.5 µs/event).
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


@main.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
@pass_context
def db_upgrade_command(ctx: Context) -> None:
    """Create or migrate the schema to the newest revision."""
    from audience_sync.runtime import Runtime
    from audience_sync.store.migrate import current_revision, upgrade

    settings = _setup(ctx)
    runtime = Runtime.from_settings(settings)
    try:
        upgrade(runtime.engine)
    except Exception as exc:
        click.echo(f"database upgrade failed: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"database at revision {current_revision(runtime.engine)}")


@main.group("config")
def config_group() -> None:
    """Configuration commands."""


@config_group.command("check")
@pass_context
def config_check_command(ctx: Context) -> None:
    """Validate the configuration and print every problem at once (secrets masked)."""
    import json

    settings = ctx.settings
    click.echo(f"configuration OK ({settings.source})")
    click.echo(json.dumps(settings.redacted(), indent=2, sort_keys=True))


@main.command("status")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (the same as GET /api/v1/status plus connections) for scripts.",
)
@pass_context
def status_command(ctx: Context, as_json: bool) -> None:
    """Summarise connections, audiences, backlog, failures, feeds and jobs.

    Exits 0 when healthy, 1 when something needs attention (suspended workspace, schema not
    current, database unreachable).
    """
    import json
    import time

    from audience_sync.admin.summary import collect, render
    from audience_sync.runtime import Runtime

    settings = _setup(ctx)
    # Reading the schema revision makes Alembic announce itself: not news for a summary.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    runtime = Runtime.from_settings(settings)
    try:
        summary = collect(runtime, now=time.time())
    finally:
        runtime.engine.dispose()
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=False, default=str))
    else:
        render(summary)
    sys.exit(0 if summary["status"].get("healthy") else 1)
