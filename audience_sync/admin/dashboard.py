"""The dashboard at ``/``: server-rendered pages behind the admin token (SPEC §8).

No script, no build step, nothing fetched from elsewhere: Jinja templates with inline SVG
charts (:mod:`audience_sync.admin.charts`) and one inline style sheet, under a strict
Content-Security-Policy. Signing in posts the token once to ``/login``, which sets the signed
session cookie (:mod:`audience_sync.admin.auth`); every later form carries the CSRF token.
"""

from __future__ import annotations

import logging
import time
import typing as t
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, redirect, render_template, request, session, url_for

from audience_sync.admin import auth, charts, overview
from audience_sync.admin.api import replay_dead
from audience_sync.admin.feeds import feed_platforms
from audience_sync.runtime import current_runtime
from audience_sync.store import activity, reads
from audience_sync.store.engine import read_only
from audience_sync.telemetry import Action

logger = logging.getLogger(__name__)

bp = Blueprint("dashboard", __name__, template_folder="templates")

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CONNECTIONS_SHOWN = 50
AUDIENCES_SHOWN = 12
LIST_SHOWN = 200


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@bp.app_template_filter("ago")
def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    seconds = max(time.time() - ts, 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


@bp.app_template_filter("utc")
def _utc(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("human")
def _human(n: float | None) -> str:
    return "—" if n is None else charts.human(n)


def _signed_in() -> bool:
    return auth.session_ok() or auth.bearer_ok()


def _login_redirect() -> Response:
    return redirect(url_for("dashboard.login", next=request.full_path.rstrip("?")))


def _token_configured() -> bool:
    return bool(current_runtime().settings.get("admin.token").reveal())


@bp.route("/login", methods=["GET", "POST"])
def login() -> t.Any:
    """The sign-in form: the admin token, once; the session cookie afterwards."""
    if not _token_configured():
        return render_template("admin/login.html", disabled=True), 403
    error = None
    if request.method == "POST":
        if auth.token_matches(request.form.get("token", "")):
            auth.log_in()
            logger.info("dashboard sign-in", extra={"action": Action.ADMIN_LOGIN})
            target = request.args.get("next", "")
            # Only a local path: never an open redirect to another site.
            if not target.startswith("/") or target.startswith("//") or "\\" in target:
                target = url_for("dashboard.index")
            return redirect(target, code=303)
        logger.info("dashboard sign-in refused", extra={"action": Action.ADMIN_LOGIN_FAILED})
        error = "That token is not valid."
        return render_template("admin/login.html", error=error), 401
    return render_template("admin/login.html", error=error)


@bp.post("/logout")
def logout() -> t.Any:
    """End the session (the form carries the CSRF token)."""
    if auth.session_ok() and auth.csrf_ok(request.form.get("csrf")):
        session.clear()
        logger.info("dashboard sign-out", extra={"action": Action.ADMIN_LOGOUT})
    return redirect(url_for("dashboard.login"), code=303)


@bp.get("/")
def index() -> t.Any:
    """Health, backlog and throughput, failures, data points, connections, feeds, jobs."""
    if not _signed_in():
        return _login_redirect()
    runtime = current_runtime()
    now = time.time()
    state = overview.status(runtime, now=now)
    with read_only(runtime.engine) as conn:
        minutes = activity.minute_series(conn, now=now)
        days = activity.day_series(conn, now=now)
        connections = reads.list_connections(conn, limit=CONNECTIONS_SHOWN)
        audiences = {
            c.account_id: reads.list_audiences(conn, c.account_id, limit=AUDIENCES_SHOWN)
            for c in connections
        }
        feeds = reads.feed_states(conn, feed_platforms(runtime.settings))
        jobs = reads.job_runs(conn, limit=10)
        points = reads.list_datapoints(conn, limit=10)
    minute_labels = [datetime.fromtimestamp(s, tz=UTC).strftime("%H:%M") for s in minutes.starts]
    day_labels = [d[5:] for d in days.days]
    spent, full = sum(days.datapoints), sum(days.datapoints_full)
    graphs = {
        "throughput": charts.bars(
            minutes.written,
            minute_labels,
            label_every=10,
            title="users written per minute",
            empty="nothing written in the last hour",
        ),
        "backlog": charts.bars(
            [*minutes.backlog_enqueued],
            minute_labels,
            label_every=10,
            title="pending users by minute enqueued",
            empty="nothing pending",
        ),
        "daily": charts.bars(
            [],
            day_labels,
            series=[
                ("delivered", days.accepted, charts.BLUE),
                ("memberships in", days.memberships, charts.GREY),
            ],
            width=1280,
            label_every=1,
            title="users delivered and memberships received per day",
        ),
        "datapoints": charts.bars(
            [],
            day_labels,
            series=[
                ("spent", days.datapoints, charts.GREEN),
                ("resend-everything", days.datapoints_full, charts.GREY),
            ],
            label_every=3,
            title="data points per day",
            empty="nothing written to Braze yet",
        ),
        "failures": charts.hbars(
            list(days.failures.items())[:10],
            title="failures by reason",
            empty="no failures in the last 14 days",
        ),
    }
    return render_template(
        "admin/dashboard.html",
        state=state,
        graphs=graphs,
        minutes=minutes,
        connections=connections,
        audiences=audiences,
        feeds=feeds,
        jobs=jobs,
        points=points,
        spent=spent,
        full=full,
        saved=max(full - spent, 0),
        csrf=auth.csrf_token(),
        now=now,
    )


@bp.get("/connections/<int:account_id>")
def connection(account_id: int) -> t.Any:
    """One connection: masked settings, every audience, data points by day."""
    if not _signed_in():
        return _login_redirect()
    external_id = request.args.get("external_id", "").strip()
    if external_id:
        return redirect(
            url_for("dashboard.user", account_id=account_id, external_id=external_id), code=303
        )
    with read_only(current_runtime().engine) as conn:
        row = reads.get_connection(conn, account_id)
        if row is None:
            abort(404, description=f"no connection {account_id}")
        audiences = reads.list_audiences(conn, account_id, limit=LIST_SHOWN)
        points = reads.list_datapoints(conn, account_id=account_id, limit=LIST_SHOWN)
    return render_template(
        "admin/connection.html",
        c=row,
        overrides=reads.mask_settings(current_runtime().settings.connection_overrides(account_id)),
        audiences=audiences,
        points=points,
        csrf=auth.csrf_token(),
    )


@bp.get("/connections/<int:account_id>/users/<path:external_id>")
def user(account_id: int, external_id: str) -> t.Any:
    """One user: desired, acknowledged, pending, outcomes."""
    if not _signed_in():
        return _login_redirect()
    detail = overview.user_detail(current_runtime(), account_id, external_id)
    if detail is None:
        abort(404, description=f"no user {external_id!r} in connection {account_id}")
    return render_template("admin/user.html", u=detail, csrf=auth.csrf_token())


@bp.get("/deliveries")
def deliveries() -> t.Any:
    """Dead letters (or pending users) with the replay button."""
    if not _signed_in():
        return _login_redirect()
    state = request.args.get("state", "dead")
    if state not in ("dead", "pending"):
        state = "dead"
    with read_only(current_runtime().engine) as conn:
        rows = reads.list_deliveries(conn, state=state, limit=LIST_SHOWN)
    return render_template(
        "admin/deliveries.html",
        rows=rows,
        state=state,
        csrf=auth.csrf_token(),
        replayed=request.args.get("replayed"),
    )


@bp.post("/deliveries/replay")
def replay() -> t.Any:
    """Re-queue every dead letter (session and CSRF token required)."""
    if not auth.session_ok() or not auth.csrf_ok(request.form.get("csrf")):
        abort(403, description="sign in again: the form expired")
    count = replay_dead(None)
    return redirect(url_for("dashboard.deliveries", state="dead", replayed=count), code=303)
