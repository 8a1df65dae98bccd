"""The dashboard through the real app: sign-in, cookie flags, CSRF, what the page shows."""

from __future__ import annotations

import re

import pytest

from tests.fakes.braze_server import FakeBraze
from tests.integration.admin_helpers import (
    ACCOUNT,
    ADMIN_SETTINGS,
    ADMIN_TOKEN,
    AUDIENCES,
    BEARER,
    BLACKLISTED,
    REST_KEY,
    deliver,
    populate,
)


@pytest.fixture
def braze():
    with FakeBraze(api_keys={REST_KEY}, blacklisted_ids=BLACKLISTED) as server:
        yield server


@pytest.fixture
def delivered(make_runtime, braze):
    from audience_sync import create_app

    runtime = make_runtime(**ADMIN_SETTINGS)
    client = create_app(runtime=runtime).test_client()
    populate(client, braze.url)
    deliver(runtime)
    return client


def sign_in(client, token=ADMIN_TOKEN, next_path=None):
    url = "/login" + (f"?next={next_path}" if next_path else "")
    return client.post(url, data={"token": token})


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.mark.parametrize(
    "path",
    ["/", f"/connections/{ACCOUNT}", f"/connections/{ACCOUNT}/users/user-3", "/deliveries"],
    ids=["overview", "connection", "user", "deliveries"],
)
def test_pages_redirect_to_sign_in_without_a_session(delivered, path):
    response = delivered.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login")


def test_sign_in_sets_a_secure_httponly_strict_session_cookie(delivered):
    response = sign_in(delivered)
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("audience_sync_admin=")
    for flag in ("Secure", "HttpOnly", "SameSite=Strict"):
        assert flag in cookie
    assert ADMIN_TOKEN not in cookie
    page = delivered.get("/")
    assert page.status_code == 200
    assert "Content-Security-Policy" in page.headers
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


def test_a_wrong_token_is_refused_without_a_hint(delivered):
    response = sign_in(delivered, token="nope")
    assert response.status_code == 401
    assert "Set-Cookie" not in response.headers
    assert "That token is not valid." in response.get_data(as_text=True)
    assert delivered.get("/").status_code == 302


def test_with_no_admin_token_the_dashboard_refuses_everyone(make_client):
    client = make_client()
    assert client.get("/login").status_code == 403
    assert client.post("/login", data={"token": ""}).status_code == 403
    assert client.get("/").status_code == 302
    assert client.get("/", headers={"Authorization": "Bearer "}).status_code == 302


def test_the_dashboard_accepts_the_bearer_token_too(delivered):
    assert delivered.get("/", headers=BEARER).status_code == 200


def test_sign_in_returns_to_a_local_page_only(delivered):
    assert sign_in(delivered, next_path="/deliveries").headers["Location"] == "/deliveries"
    assert sign_in(delivered, next_path="//evil.example/").headers["Location"] == "/"
    assert sign_in(delivered, next_path="https://evil.example/").headers["Location"] == "/"


def test_the_overview_shows_health_connection_audiences_and_datapoints(delivered):
    sign_in(delivered)
    html = delivered.get("/").get_data(as_text=True)
    assert 'id="health"' in html
    assert f'data-account-id="{ACCOUNT}"' in html
    for name in AUDIENCES.values():
        assert name in html
    assert 'id="dp-spent"' in html and 'id="dp-full"' in html
    assert "2 user(s) dead-lettered" in html
    assert html.count("<svg") >= 5
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")


def test_connection_and_user_pages(delivered):
    sign_in(delivered)
    html = delivered.get(f"/connections/{ACCOUNT}").get_data(as_text=True)
    assert "restApiKey" in html and REST_KEY not in html and "***" in html
    assert "local override" in html  # connections.<id>.restApiKey, masked too
    assert html.count('class="audience"') == len(AUDIENCES)
    lookup = delivered.get(f"/connections/{ACCOUNT}?external_id=user-3")
    assert lookup.headers["Location"] == f"/connections/{ACCOUNT}/users/user-3"
    user = delivered.get(f"/connections/{ACCOUNT}/users/user-3").get_data(as_text=True)
    assert "SegmentMembership" in user and "accepted" in user
    assert delivered.get(f"/connections/{ACCOUNT}/users/nobody").status_code == 404


def test_replay_needs_the_csrf_token(delivered):
    sign_in(delivered)
    page = delivered.get("/deliveries?state=dead").get_data(as_text=True)
    for user in BLACKLISTED:
        assert user in page
    assert delivered.post("/deliveries/replay", data={}).status_code == 403
    assert delivered.post("/deliveries/replay", data={"csrf": "forged"}).status_code == 403
    foreign = delivered.post(
        "/deliveries/replay",
        data={"csrf": csrf_of(page)},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    response = delivered.post("/deliveries/replay", data={"csrf": csrf_of(page)})
    assert response.status_code == 303
    assert "replayed=2" in response.headers["Location"]
    assert BLACKLISTED[0] not in delivered.get("/deliveries?state=dead").get_data(as_text=True)


def test_sign_out_ends_the_session(delivered):
    sign_in(delivered)
    page = delivered.get("/").get_data(as_text=True)
    delivered.post("/logout", data={"csrf": csrf_of(page)})
    assert delivered.get("/").status_code == 302


def test_a_session_cookie_does_not_survive_a_token_change(make_runtime, braze):
    from audience_sync import create_app

    first = create_app(runtime=make_runtime(**ADMIN_SETTINGS)).test_client()
    sign_in(first)
    cookie = first.get_cookie("audience_sync_admin")
    assert cookie is not None
    rotated = create_app(
        runtime=make_runtime(**{**ADMIN_SETTINGS, "admin.token": "another-token"})
    ).test_client()
    rotated.set_cookie("audience_sync_admin", cookie.value)
    assert rotated.get("/").status_code == 302


def test_names_from_mparticle_are_escaped(delivered, braze):
    from tests.integration.admin_helpers import FIREHOSE, connection_settings
    from tests.support import post, subscription

    evil = '<img src=x onerror="alert(1)">'
    post(delivered, subscription(ACCOUNT, 99, evil, **connection_settings(braze.url)), FIREHOSE)
    sign_in(delivered)
    for path in ("/", f"/connections/{ACCOUNT}"):
        html = delivered.get(path).get_data(as_text=True)
        assert evil not in html
        assert "&lt;img src=x" in html


def test_behind_a_tls_proxy_the_same_host_is_accepted(delivered):
    sign_in(delivered)
    page = delivered.get("/deliveries?state=dead").get_data(as_text=True)
    response = delivered.post(
        "/deliveries/replay",
        data={"csrf": csrf_of(page)},
        headers={"Origin": "https://localhost"},  # the browser saw https, the app sees http
    )
    assert response.status_code == 303
