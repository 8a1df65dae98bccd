"""``audience-sync status`` and ``--help``, as an operator runs them (SPEC §1)."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from audience_sync.cli import main
from tests.fakes.braze_server import FakeBraze
from tests.integration.admin_helpers import (
    ACCOUNT,
    ADMIN_SETTINGS,
    AUDIENCES,
    BLACKLISTED,
    REST_KEY,
    deliver,
    populate,
)


def all_commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


def test_help_names_the_config_variable_and_the_exit_codes():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "AUDIENCE_SYNC_CONFIG" in result.output
    assert "AUDIENCE_SYNC_<SECTION>__<KEY>" in result.output
    assert "Exit codes: 0" in result.output
    for command in ("run", "serve", "worker", "status", "replay", "db", "config"):
        assert command in result.output


@pytest.mark.parametrize(
    "path", [p for p, _ in all_commands(main)], ids=[" ".join(p) for p, _ in all_commands(main)]
)
def test_every_command_and_option_is_explained(path):
    command = dict(all_commands(main))[path]
    assert command.help, f"{' '.join(path)} has no help"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{' '.join(path)} {param.opts} has no help"
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def delivered_url(make_runtime):
    from audience_sync import create_app

    with FakeBraze(api_keys={REST_KEY}, blacklisted_ids=BLACKLISTED) as braze:
        runtime = make_runtime(**ADMIN_SETTINGS)
        populate(create_app(runtime=runtime).test_client(), braze.url)
        deliver(runtime)
        yield runtime.settings.get("database.url")


def test_status_json_summarises_connections_audiences_backlog(delivered_url):
    env = {"AUDIENCE_SYNC_DATABASE__URL": delivered_url}
    result = CliRunner().invoke(main, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    status = body["status"]
    assert status["healthy"] is True
    assert status["backlog"]["dead"] == len(BLACKLISTED)
    assert status["failures_today"]["dead_lettered"] == len(BLACKLISTED)
    [conn] = body["connections"]
    assert conn["account_id"] == ACCOUNT
    assert {a["name"] for a in conn["audience_list"]} == set(AUDIENCES.values())
    assert body["feeds"] == [] and body["jobs"] == []


def test_status_is_readable(delivered_url):
    env = {"AUDIENCE_SYNC_DATABASE__URL": delivered_url}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 0, result.output
    for text in ("healthy", str(ACCOUNT), "Ibiza Dreamers", "dead letters", "dead_lettered"):
        assert text in result.output


def test_status_exits_1_when_the_schema_is_missing(tmp_path):
    env = {"AUDIENCE_SYNC_DATABASE__URL": f"sqlite:///{tmp_path}/empty.db"}
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == 1
    assert "needs attention" in result.output


def test_status_exits_2_on_a_configuration_error():
    result = CliRunner().invoke(main, ["status"], env={"AUDIENCE_SYNC_SERVER__PORT": "eighty"})
    assert result.exit_code == 2
    assert "server.port" in result.output
