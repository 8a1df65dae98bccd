from __future__ import annotations

from audience_sync import create_app
from audience_sync.runtime import Runtime
from audience_sync.settings import load_settings


def test_healthz_and_readyz_on_migrated_database(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_refuses_an_unmigrated_database(tmp_path):
    settings = load_settings(environ={}, overrides={"database.url": f"sqlite:///{tmp_path}/x.db"})
    app = create_app(runtime=Runtime.from_settings(settings))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "migrations_pending"


def test_unknown_route_uses_the_json_error_shape(client):
    response = client.get("/nope")
    assert response.status_code == 404
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "errors"}
    assert body["code"] == 404
