from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from audience_sync.errors import ConfigValidationError
from audience_sync.settings import FIELDS, Secret, _flatten, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_file_matches_the_code():
    with (ROOT / "config" / "default.toml").open("rb") as fh:
        data = tomllib.load(fh)
    flat = _flatten(data)  # jobs.<name>.<key> nests three levels
    for key, value in flat.items():
        _kind, default = FIELDS[key]
        assert value == default, key
    secret_keys = {k for k, (kind, _) in FIELDS.items() if kind.startswith("secret")}
    assert set(flat) | secret_keys == set(FIELDS)


@pytest.mark.parametrize("name", ["local.toml", "production.example.toml"])
def test_shipped_configs_are_valid(name):
    load_settings(ROOT / "config" / name, environ={})


def test_environment_overrides_with_lists_and_nesting():
    settings = load_settings(
        environ={
            "AUDIENCE_SYNC_BRAZE__DRY_RUN": "true",
            "AUDIENCE_SYNC_FIREHOSE__TOKENS": "a, b",
            "AUDIENCE_SYNC_BRAZE__ALLOWED_CUSTOM_ENDPOINTS": "http://127.0.0.1:",
            "AUDIENCE_SYNC_CONNECTIONS__42__restApiKey": "secret-key",
            "AUDIENCE_SYNC_CURRENTS__FEEDS__IOS__KEY": "k",
            "AUDIENCE_SYNC_CURRENTS__FEEDS__IOS__SECRET": "s",
            "AUDIENCE_SYNC_CURRENTS__FEEDS__IOS__PLATFORM": "ios",
        }
    )
    assert settings.get("braze.dry_run") is True
    assert settings.get("firehose.tokens") == (Secret("a"), Secret("b"))
    assert settings.get("braze.allowed_custom_endpoints") == ("http://127.0.0.1:",)
    assert settings.connection_overrides(42) == {"restApiKey": "secret-key"}
    assert settings.feeds[0].platform == "ios"


def test_every_problem_is_reported_at_once_with_its_key():
    with pytest.raises(ConfigValidationError) as info:
        load_settings(
            environ={
                "AUDIENCE_SYNC_SERVER__PORT": "eighty",
                "AUDIENCE_SYNC_BRAZE__ARRAY_WRITE": "sometimes",
                "AUDIENCE_SYNC_DELIVERY__WORKERS": "0",
                "AUDIENCE_SYNC_BRAZE__NOPE": "1",
                "AUDIENCE_SYNC_BRAZE__MAX_OBJECTS_PER_REQUEST": "100",
            }
        )
    keys = {e.split(":")[0] for e in info.value.errors}
    assert keys == {
        "server.port",
        "braze.array_write",
        "delivery.workers",
        "braze.nope",
        "braze.max_objects_per_request",
    }


def test_secrets_never_show_in_repr_or_redacted_view():
    settings = load_settings(
        environ={
            "AUDIENCE_SYNC_FIREHOSE__TOKENS": "tok-123",
            "AUDIENCE_SYNC_ADMIN__TOKEN": "adm-456",
            "AUDIENCE_SYNC_CONNECTIONS__7__restApiKey": "rest-789",
        }
    )
    text = repr(settings) + repr(settings.redacted())
    for secret in ("tok-123", "adm-456", "rest-789"):
        assert secret not in text


def test_config_file_then_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\n[braze]\narray_write = "full"\n')
    settings = load_settings(path, environ={"AUDIENCE_SYNC_SERVER__PORT": "9100"})
    assert settings.get("server.port") == 9100
    assert settings.get("braze.array_write") == "full"


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigValidationError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_database_password_is_masked():
    settings = load_settings(
        environ={"AUDIENCE_SYNC_DATABASE__URL": "postgresql+psycopg://u:pw-secret@h/db"}
    )
    assert "pw-secret" not in repr(settings)
    assert settings.get("database.url").endswith("pw-secret@h/db")


def test_lease_must_outlast_a_request():
    with pytest.raises(ConfigValidationError, match=r"delivery\.lease_s"):
        load_settings(environ={"AUDIENCE_SYNC_DELIVERY__LEASE_S": "10"})


@pytest.mark.parametrize(("lease_s", "valid"), [(1.5, False), (2.0, False), (2.5, True)])
def test_lease_must_outlast_a_request_sent_a_second_after_its_renewal(lease_s, valid):
    # A request goes out up to SEND_WITHIN_S (1 s) after its users' lease was renewed.
    overrides = {"delivery.lease_s": lease_s, "braze.timeout_s": 1.0}
    if valid:
        assert load_settings(environ={}, overrides=overrides).get("delivery.lease_s") == lease_s
    else:
        with pytest.raises(ConfigValidationError, match=r"delivery\.lease_s"):
            load_settings(environ={}, overrides=overrides)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("braze.allowed_custom_endpoints", ["127.0.0.1:"]),
        ("braze.allowed_custom_endpoints", ["http://user:hunter2@127.0.0.1:"]),
        ("braze.allowed_custom_endpoints", ["http://127.0.0.1.:"]),
        ("braze.allowed_custom_endpoints", ["http://%31.0.0.1:"]),
        ("currents.allowed_mparticle_urls", ["http://127.0.0.1:8080\\@x"]),
        ("currents.allowed_mparticle_urls", ["http://[::ffff:127.0.0.1]:"]),
        ("currents.mparticle_url", "http://s2s.mparticle.com"),
        ("currents.mparticle_url", "https://s2s.mparticle.com.evil.example"),
        ("currents.mparticle_url", "https://x@s2s.mparticle.com"),
        ("currents.mparticle_url", "http://127.0.0.1:9000"),
    ],
    ids=lambda v: v if isinstance(v, str) else repr(v),
)
def test_outbound_urls_and_allow_lists_are_checked_as_parsed_urls(key, value):
    with pytest.raises(ConfigValidationError) as info:
        load_settings(environ={}, overrides={key: value})
    assert any(e.startswith(key) for e in info.value.errors)
    assert "hunter2" not in str(info.value)


def test_mparticle_url_may_be_a_pod_or_an_allowed_local_server():
    pod = load_settings(
        environ={}, overrides={"currents.mparticle_url": "https://s2s.us2.mparticle.com"}
    )
    assert pod.get("currents.mparticle_url") == "https://s2s.us2.mparticle.com"
    local = load_settings(
        environ={},
        overrides={
            "currents.mparticle_url": "http://127.0.0.1:9000",
            "currents.allowed_mparticle_urls": ["http://127.0.0.1:"],
        },
    )
    assert local.get("currents.mparticle_url") == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("https://s2s.eu1.mparticle.com", [], True),
        ("https://user@s2s.mparticle.com", [], False),
        ("https://mparticle.com.example.org", [], False),
        ("http://127.0.0.1:8099", ["http://127.0.0.1:"], True),
        ("http://127.0.0.1:8099", [], False),
    ],
    ids=["pod", "userinfo", "lookalike", "allowed", "not-allowed"],
)
def test_mparticle_url_is_checked_as_a_parsed_url_at_start_up(url, allowed, ok):
    overrides = {"currents.mparticle_url": url, "currents.allowed_mparticle_urls": allowed}
    if ok:
        load_settings(environ={}, overrides=overrides)
    else:
        with pytest.raises(ConfigValidationError, match=r"currents\.mparticle_url"):
            load_settings(environ={}, overrides=overrides)


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("key", "", "required"),
        ("secret", "", "required"),
        ("key", "us1-leaked:part", "':'"),
        ("secret", "leaked-secret\n", "newline"),
        ("secret", "leaked\r\nX-Evil: 1", "newline"),
    ],
    ids=["empty-key", "empty-secret", "colon-in-key", "newline", "header-injection"],
)
def test_feed_credentials_unfit_for_basic_auth_are_refused_by_name(field, value, why):
    feed = {"key": "us1-good", "secret": "good", "platform": "ios", field: value}
    overrides = {f"currents.feeds.ios.{k}": v for k, v in feed.items()}
    with pytest.raises(ConfigValidationError) as info:
        load_settings(environ={}, overrides=overrides)
    (error,) = info.value.errors
    assert error.startswith(f"currents.feeds.ios.{field}: ")
    assert why in error
    if value:
        assert value not in str(info.value)
        assert "leaked" not in str(info.value)
