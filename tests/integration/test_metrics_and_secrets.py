"""``/metrics`` (SPEC §8) and the promise that no secret reaches anywhere an operator looks:
logs, API output, metrics, the dashboard, ``status``."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from audience_sync.cli import main
from audience_sync.logs import JsonFormatter
from tests.fakes.braze_server import FakeBraze
from tests.integration.admin_helpers import (
    ACCOUNT,
    ADMIN_SETTINGS,
    ADMIN_TOKEN,
    BEARER,
    BLACKLISTED,
    REST_KEY,
    SECRETS,
    deliver,
    populate,
)


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}, blacklisted_ids=BLACKLISTED) as server:
        yield server


@pytest.fixture
def json_logs():
    """Every record of the run, rendered as the JSON lines a deployment writes."""
    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Capture(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_report_database_truth_and_in_process_counters(make_runtime, braze):
    from audience_sync import create_app

    runtime = make_runtime(**ADMIN_SETTINGS)
    client = create_app(runtime=runtime).test_client()
    before = samples(client.get("/metrics").get_data(as_text=True))
    populate(client, braze.url)
    middle = samples(client.get("/metrics").get_data(as_text=True))
    assert middle[("audience_sync_users_dirty", ())] == 20
    deliver(runtime)
    client.get("/api/v1/status")  # a 401, counted
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    after = samples(response.get_data(as_text=True))
    assert after[("audience_sync_users_dirty", ())] == 0
    assert after[("audience_sync_dead_letters", ())] == len(BLACKLISTED)
    assert after[("audience_sync_outbox_users", (("state", "dead"),))] == len(BLACKLISTED)
    assert after[("audience_sync_database_up", ())] == 1
    assert after[("audience_sync_connections", (("state", "active"),))] == 1

    def grew(name, labels=()):
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0) - before.get(key, 0)

    # Two users are blacklisted: their request is answered as partially applied.
    assert grew("audience_sync_braze_requests_total", [("outcome", "partial")]) >= 1
    assert grew("audience_sync_braze_objects_per_request_count") >= 1
    assert grew("audience_sync_braze_request_duration_seconds_count") >= 1
    assert grew("audience_sync_braze_datapoints_total") > 0
    assert grew("audience_sync_braze_datapoints_full_total") > 0
    assert grew("audience_sync_memberships_applied_total") == 40
    refused = [("endpoint", "/api/v1/status"), ("method", "GET"), ("status", "401")]
    assert grew("audience_sync_http_requests_total", refused) == 1
    accepted = [("endpoint", "/firehose"), ("method", "POST"), ("status", "200")]
    assert grew("audience_sync_http_requests_total", accepted) == 4
    assert (
        after[("audience_sync_http_request_duration_seconds_count", (("endpoint", "/firehose"),))]
        >= 4
    )


def test_two_processes_report_the_same_database_values(make_runtime, braze):
    from audience_sync import create_app
    from audience_sync.admin.metrics import DatabaseCollector

    runtime = make_runtime(**ADMIN_SETTINGS)
    populate(create_app(runtime=runtime).test_client(), braze.url)
    other = make_runtime(**ADMIN_SETTINGS)  # another process's engine on the same database
    values = []
    for rt in (runtime, other):
        families = {f.name: f for f in DatabaseCollector(rt.engine).collect()}
        values.append(families["audience_sync_users_dirty"].samples[0].value)
    assert values == [20, 20]


def test_no_secret_appears_anywhere_an_operator_looks(make_runtime, braze, json_logs, tmp_path):
    from audience_sync import create_app

    runtime = make_runtime(**ADMIN_SETTINGS)
    client = create_app(runtime=runtime).test_client()
    populate(client, braze.url)
    deliver(runtime)
    client.post("/api/v1/deliveries/replay", json={}, headers={"Authorization": "Bearer guess"})
    client.post("/login", data={"token": "wrong"})

    seen: list[str] = []
    for path in (
        "/api/v1/status",
        "/api/v1/connections",
        f"/api/v1/connections/{ACCOUNT}",
        f"/api/v1/connections/{ACCOUNT}/audiences",
        f"/api/v1/connections/{ACCOUNT}/users/user-3",
        f"/api/v1/connections/{ACCOUNT}/users/user-0",
        "/api/v1/deliveries?state=dead",
        "/api/v1/currents/feeds",
        "/api/v1/jobs",
        "/api/v1/datapoints",
        "/api/v1/openapi.json",
    ):
        response = client.get(path, headers=BEARER)
        assert response.status_code == 200, path
        seen.append(response.get_data(as_text=True))
    seen.append(client.post("/api/v1/deliveries/replay", json={}, headers=BEARER).get_data(True))
    seen.append(client.get("/metrics").get_data(as_text=True))
    login = client.post("/login", data={"token": ADMIN_TOKEN})
    seen.append(str(login.headers))
    for path in (
        "/",
        f"/connections/{ACCOUNT}",
        f"/connections/{ACCOUNT}/users/user-3",
        "/deliveries?state=dead",
        "/deliveries?state=pending",
    ):
        seen.append(client.get(path).get_data(as_text=True))

    env = {
        "AUDIENCE_SYNC_DATABASE__URL": runtime.settings.get("database.url"),
        "AUDIENCE_SYNC_ADMIN__TOKEN": ADMIN_TOKEN,
        "AUDIENCE_SYNC_CURRENTS__FEEDS__WEB__KEY": ADMIN_SETTINGS["currents.feeds.web.key"],
        "AUDIENCE_SYNC_CURRENTS__FEEDS__WEB__SECRET": ADMIN_SETTINGS["currents.feeds.web.secret"],
        "AUDIENCE_SYNC_CURRENTS__FEEDS__WEB__PLATFORM": "web",
    }
    for args in (["status"], ["status", "--json"], ["config", "check"]):
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, result.output
        seen.append(result.output)
    assert '"users": 20' in seen[-2]

    seen.extend(json_logs)
    assert any('"action": "admin_unauthorized"' in line for line in json_logs)
    assert any('"action": "admin_login_failed"' in line for line in json_logs)
    everything = "\n".join(seen)
    for secret in SECRETS:
        assert secret not in everything, f"secret {secret[:8]}... leaked"
    assert "***" in everything  # masked, not just absent
    # The log lines are JSON objects with an action from the vocabulary.
    for line in json_logs:
        json.loads(line)


def test_multiprocess_mode_sums_the_workers_series(tmp_path):
    """gunicorn -w N: two processes count into PROMETHEUS_MULTIPROC_DIR; one answers for both."""
    import os
    import subprocess
    import sys

    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    count = (
        "from audience_sync import telemetry; "
        "telemetry.braze_request('accepted', objects=75, seconds=0.1)"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True)
    show = (
        "from audience_sync.store.engine import create_engine; "
        "from audience_sync.admin import metrics; from flask import Flask; "
        f"app = Flask('m'); metrics.init_app(app, create_engine('sqlite:///{tmp_path}/x.db')); "
        "print(app.test_client().get('/metrics').get_data(as_text=True))"
    )
    out = subprocess.run(
        [sys.executable, "-c", show], env=env, check=True, capture_output=True, text=True
    ).stdout
    values = samples(out)
    assert values[("audience_sync_braze_requests_total", (("outcome", "accepted"),))] == 2
    assert values[("audience_sync_database_up", ())] == 0  # no schema there: reported, not raised
