"""The admin API under ``/api/v1/`` (SPEC §8), on flask-smorest so that the OpenAPI document at
``/api/v1/openapi.json`` is generated from these routes and their marshmallow schemas.

Every route needs ``Authorization: Bearer <admin.token>`` (reads also accept the dashboard's
session). Lists are cursor-paginated (:mod:`audience_sync.admin.pagination`). Views are thin:
they read through :mod:`audience_sync.store.reads` and shape the answer.
"""

from __future__ import annotations

import logging
import time
import typing as t

from flask import abort
from flask_smorest import Api, Blueprint

from audience_sync import __version__
from audience_sync.admin import auth, overview, pagination
from audience_sync.admin.feeds import feed_platforms
from audience_sync.admin.pagination import PageArgsSchema
from audience_sync.admin.schemas import (
    AudiencePageSchema,
    ConnectionPageSchema,
    ConnectionSchema,
    DatapointsArgsSchema,
    DatapointsPageSchema,
    DeliveryArgsSchema,
    DeliveryPageSchema,
    FeedPageSchema,
    JobRunPageSchema,
    ReplayArgsSchema,
    ReplayResultSchema,
    StatusSchema,
    UserSchema,
)
from audience_sync.errors import InvalidPayloadError
from audience_sync.runtime import current_runtime
from audience_sync.store import connections, outbox, reads
from audience_sync.store.engine import read_only
from audience_sync.store.transactions import in_transaction
from audience_sync.telemetry import Action

logger = logging.getLogger(__name__)

PREFIX = "/api/v1"

blp = Blueprint(
    "admin",
    __name__,
    url_prefix=PREFIX,
    description="Operate audience-sync: state, backlog, dead letters, feeds, jobs, data points.",
)
blp.before_request(auth.api_guard)


class AdminApi(Api):
    """flask-smorest's Api without its app-wide error handlers: the app already answers every
    error in the one JSON shape (:mod:`audience_sync.http_errors`)."""

    def _register_error_handlers(self) -> None:
        return None


def _conn() -> t.Any:
    return read_only(current_runtime().engine)


def _with_age(rows: list[t.Any], field: str, age_field: str, now: float) -> list[dict[str, t.Any]]:
    out = []
    for row in rows:
        body = dict(vars(row))
        at = body.get(field)
        body[age_field] = round(now - at, 1) if at is not None else None
        out.append(body)
    return out


@blp.route("/status")
@blp.response(200, StatusSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def get_status() -> dict[str, t.Any]:
    """The engine at a glance: health, backlog, failures today, data points today."""
    return overview.status(current_runtime(), now=time.time())


@blp.route("/connections")
@blp.arguments(PageArgsSchema, location="query", error_status_code=400)
@blp.response(200, ConnectionPageSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def list_connections(args: dict[str, t.Any]) -> dict[str, t.Any]:
    """mParticle connections: settings (secrets masked), state, counts."""
    after = pagination.decode("connections", args["cursor"])
    with _conn() as conn:
        rows = reads.list_connections(conn, after=_first_int(after), limit=args["limit"] + 1)
    return pagination.page("connections", rows, args["limit"], lambda r: [r.account_id])


@blp.route("/connections/<int:account_id>")
@blp.response(200, ConnectionSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def get_connection(account_id: int) -> t.Any:
    """One connection (404 if mParticle never subscribed it)."""
    with _conn() as conn:
        row = reads.get_connection(conn, account_id)
    if row is None:
        abort(404, description=f"no connection {account_id}")
    return row


@blp.route("/connections/<int:account_id>/audiences")
@blp.arguments(PageArgsSchema, location="query", error_status_code=400)
@blp.response(200, AudiencePageSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def list_audiences(args: dict[str, t.Any], account_id: int) -> dict[str, t.Any]:
    """A connection's audiences: members, last change, data points, drift."""
    after = pagination.decode("audiences", args["cursor"])
    with _conn() as conn:
        if reads.get_connection(conn, account_id) is None:
            abort(404, description=f"no connection {account_id}")
        rows = reads.list_audiences(
            conn, account_id, after=_first_int(after), limit=args["limit"] + 1
        )
    return pagination.page("audiences", rows, args["limit"], lambda r: [r.audience_id])


@blp.route("/connections/<int:account_id>/users/<path:external_id>")
@blp.response(200, UserSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def get_user(account_id: int, external_id: str) -> dict[str, t.Any]:
    """One user: desired and acknowledged attributes, the pending write, the last outcomes."""
    detail = overview.user_detail(current_runtime(), account_id, external_id)
    if detail is None:
        abort(404, description=f"no user {external_id!r} in connection {account_id}")
    return detail


@blp.route("/deliveries")
@blp.arguments(DeliveryArgsSchema, location="query", error_status_code=400)
@blp.response(200, DeliveryPageSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def list_deliveries(args: dict[str, t.Any]) -> dict[str, t.Any]:
    """Users waiting for Braze (``state=pending``) or given up on (``state=dead``)."""
    after = pagination.decode("deliveries", args["cursor"])
    with _conn() as conn:
        workspace_ids = None
        if args["account_id"] is not None:
            workspace_ids = connections.workspace_ids_of_account(conn, args["account_id"])
        rows = reads.list_deliveries(
            conn,
            state=args["state"],
            workspace_ids=workspace_ids,
            after=(int(after[0]), str(after[1])) if after and len(after) == 2 else None,
            limit=args["limit"] + 1,
        )
    return pagination.page(
        "deliveries", rows, args["limit"], lambda r: [r.workspace_id, r.external_id]
    )


@blp.route("/deliveries/replay", methods=["POST"])
@blp.arguments(ReplayArgsSchema, location="json", error_status_code=400)
@blp.response(200, ReplayResultSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def replay(args: dict[str, t.Any]) -> dict[str, t.Any]:
    """Re-queue dead-lettered users (of one connection, or all) with a fresh attempt budget."""
    count = replay_dead(args.get("account_id"))
    return {"requeued": count}


def replay_dead(account_id: int | None) -> int:
    """Re-queue dead letters now; shared by the API and the dashboard's button."""
    engine = current_runtime().engine

    def work(conn: t.Any) -> int:
        workspace_ids = None
        if account_id is not None:
            workspace_ids = connections.workspace_ids_of_account(conn, account_id)
        if workspace_ids == []:
            return 0
        return outbox.replay(conn, now=time.time(), workspace_ids=workspace_ids)

    count = in_transaction(engine, work, action="replay")
    logger.info(
        "dead letters re-queued",
        extra={"action": Action.ADMIN_REPLAY, "account_id": account_id, "users": count},
    )
    return count


@blp.route("/currents/feeds")
@blp.arguments(PageArgsSchema, location="query", error_status_code=400)
@blp.response(200, FeedPageSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def list_feeds(args: dict[str, t.Any]) -> dict[str, t.Any]:
    """Currents feeds: state, backlog, age of the oldest waiting event (never key or secret)."""
    after = pagination.decode("feeds", args["cursor"])
    now = time.time()
    with _conn() as conn:
        feeds = reads.feed_states(conn, feed_platforms(current_runtime().settings))
    if after:
        feeds = [f for f in feeds if f.name > str(after[0])]
    rows = _with_age(feeds[: args["limit"] + 1], "oldest_event_at", "oldest_event_age_s", now)
    return pagination.page("feeds", rows, args["limit"], lambda r: [r["name"]])


@blp.route("/jobs")
@blp.arguments(PageArgsSchema, location="query", error_status_code=400)
@blp.response(200, JobRunPageSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def list_jobs(args: dict[str, t.Any]) -> dict[str, t.Any]:
    """Scheduled job runs, newest first."""
    after = pagination.decode("jobs", args["cursor"])
    with _conn() as conn:
        rows = reads.job_runs(conn, after=_first_int(after), limit=args["limit"] + 1)
    return pagination.page("jobs", rows, args["limit"], lambda r: [r.id])


@blp.route("/datapoints")
@blp.arguments(DatapointsArgsSchema, location="query", error_status_code=400)
@blp.response(200, DatapointsPageSchema)
@blp.alt_response(401, response="UNAUTHORIZED")
def list_datapoints(args: dict[str, t.Any]) -> dict[str, t.Any]:
    """Braze data points spent per day, connection and audience (newest day first)."""
    after = pagination.decode("datapoints", args["cursor"])
    key = None
    if after and len(after) == 3:
        key = (str(after[0]), int(after[1]), int(after[2]))
    with _conn() as conn:
        rows = reads.list_datapoints(
            conn,
            account_id=args["account_id"],
            day_from=args["day_from"].isoformat() if args["day_from"] else None,
            day_to=args["day_to"].isoformat() if args["day_to"] else None,
            after=key,
            limit=args["limit"] + 1,
        )
    return pagination.page(
        "datapoints", rows, args["limit"], lambda r: [r.day, r.account_id, r.audience_id]
    )


def _first_int(key: list[t.Any] | None) -> int | None:
    """The integer key of a one-column cursor."""
    if key is None:
        return None
    if len(key) != 1 or not isinstance(key[0], int):
        raise InvalidPayloadError("invalid cursor", {"cursor": ["Malformed cursor."]})
    return key[0]


def init_api(app: t.Any) -> AdminApi:
    """Register the API blueprint and its generated OpenAPI document."""
    app.config.update(
        API_TITLE="audience-sync admin API",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX=PREFIX,
        OPENAPI_JSON_PATH="openapi.json",
    )
    api = AdminApi(
        app,
        spec_kwargs={
            "security": [{"bearerAuth": []}],
            "info": {
                "description": "Bearer admin.token on every route. Times are epoch seconds. "
                "Lists take limit and cursor and answer {items, next_cursor}."
            },
        },
    )
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "description": "admin.token"}
    )
    api.register_blueprint(blp)
    # The generated document is behind the same token as the routes it describes.
    app.before_request_funcs.setdefault("api-docs", []).append(auth.api_guard)
    return api
