"""The ``audience-sync`` command line (SPEC §1). Exit codes: 0 success, 2 usage or
configuration error, 1 runtime failure."""

from __future__ import annotations

import logging
import sys
import typing as t

import click

from audience_sync.errors import ConfigValidationError
from audience_sync.settings import Settings, load_settings

logger = logging.getLogger(__name__)

CONFIG_HELP = (
    "TOML configuration file (or set AUDIENCE_SYNC_CONFIG). Any key can be overridden with "
    "AUDIENCE_SYNC_<SECTION>__<KEY>, e.g. AUDIENCE_SYNC_BRAZE__DRY_RUN=true."
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


@click.group()
@click.option(
    "--config", "config_path", metavar="PATH", envvar="AUDIENCE_SYNC_CONFIG", help=CONFIG_HELP
)
@click.version_option(package_name="audience-sync")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """audience-sync: mParticle audiences to Braze, Braze Currents to mParticle."""
    ctx.obj = Context(config_path)


def _setup(ctx: Context) -> Settings:
    from audience_sync.logs import configure_logging

    settings = ctx.settings
    configure_logging(settings.get("log.level"))
    return settings


def _require_current_schema(runtime: t.Any) -> None:
    from audience_sync.store.migrate import is_current

    if not is_current(runtime.engine):
        click.echo("the database schema is not current: run `audience-sync db upgrade`", err=True)
        sys.exit(1)


@main.command("run")
@pass_context
def run_command(ctx: Context) -> None:
    """Run everything in one process: HTTP server and delivery workers (SQLite default)."""
    from audience_sync.process import run_all

    settings = _setup(ctx)
    sys.exit(run_all(settings, http=True, senders=True, check_schema=_require_current_schema))


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


@main.command("replay")
@click.option("--dead", is_flag=True, default=True, help="Re-queue dead-lettered users (default).")
@click.option("--connection", "account_id", type=int, help="Only this mParticle account id.")
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
    from audience_sync.runtime import Runtime

    settings = _setup(ctx)
    runtime = Runtime.from_settings(settings)
    _require_current_schema(runtime)
    config = CurrentsConfig.from_settings(settings)
    total = sum(1 for _ in find_files(paths))
    if sys.stderr.isatty():
        with click.progressbar(length=total, label="importing", file=sys.stderr) as bar:
            summary = import_paths(runtime.engine, config, paths, on_file=lambda _r: bar.update(1))
    else:
        # Off a terminal each file is a JSON log line (currents_file_imported / _failed).
        summary = import_paths(runtime.engine, config, paths)
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
