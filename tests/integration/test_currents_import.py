"""``audience-sync currents import`` and the importer behind the ``currents_watch`` job
(SPEC §6.2): Braze's storage layouts, codecs, each file once, damaged files reported."""

from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from audience_sync.cli import main
from audience_sync.currents.importer import currents_watch, import_paths
from audience_sync.currents.service import CurrentsConfig
from audience_sync.store.schema import currents_files
from tests.currents_support import (
    avro_samples,
    copy_sample,
    currents_settings,
    read_sample,
    waiting_events,
)

URL = "http://127.0.0.1:9"
EXPORTED_SAMPLES = 77
"""Avro samples whose type is in the mapping table (94 samples in all)."""


@pytest.fixture
def crt(make_runtime):
    return make_runtime(**currents_settings(URL))


def event_ids(engine):
    return [w.event_id for w in waiting_events(engine)]


def braze_tree(root, *, codec="null"):
    """Every sample in Braze's new layout (type in the path) with fresh ids."""
    ids = []
    for n, sample in enumerate(avro_samples()):
        folder = (
            root
            / "currents"
            / "dataexport.prod-03.S3.integration.abc"
            / (f"event_type={sample.stem}")
            / "date=2026-12-01-07"
        )
        ids += copy_sample(sample, folder / f"{n:03d}.avro", codec=codec)
    return ids


def test_every_avro_sample_imports_in_the_new_layout(crt, tmp_path):
    braze_tree(tmp_path)
    summary = import_paths(crt.engine, CurrentsConfig.from_settings(crt.settings), [tmp_path])
    assert summary.files == summary.imported == len(avro_samples())
    assert summary.failed == []
    assert summary.events == len(avro_samples())
    assert summary.forwarded == EXPORTED_SAMPLES
    assert dict(summary.skipped) == {"not_exported": len(avro_samples()) - EXPORTED_SAMPLES}
    assert len(event_ids(crt.engine)) == EXPORTED_SAMPLES


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy"])
def test_codecs_and_the_old_layout_take_the_type_from_the_schema(crt, tmp_path, codec):
    sample = next(p for p in avro_samples() if p.stem == "users.messages.email.Open")
    ids = copy_sample(
        sample, tmp_path / "old" / "2019" / "part-1.avro", count=50, codec=codec, users=["a", "b"]
    )
    summary = import_paths(crt.engine, CurrentsConfig.from_settings(crt.settings), [tmp_path])
    assert (summary.imported, summary.forwarded) == (1, 50)
    waiting = waiting_events(crt.engine)
    for user in ("a", "b"):  # arrival order (file order) per user, one batch each
        assert [w.event_id for w in waiting if w.external_user_id == user] == [
            i for n, i in enumerate(ids) if "ab"[n % 2] == user
        ]
    assert waiting[0].event["data"]["event_name"] == "Email Opens"


def test_each_file_once_by_path_and_checksum(crt, tmp_path):
    config = CurrentsConfig.from_settings(crt.settings)
    sample = next(p for p in avro_samples() if p.stem == "users.canvas.Entry")
    path = tmp_path / "f.avro"
    copy_sample(sample, path, count=3)
    first = import_paths(crt.engine, config, [path])
    again = import_paths(crt.engine, config, [tmp_path])
    assert (first.imported, again.imported, again.already_imported) == (1, 0, 1)
    copy_sample(sample, path, count=2)  # same path, new content: a new file
    assert import_paths(crt.engine, config, [path]).imported == 1
    copied = tmp_path / "copy.avro"
    shutil.copy(path, copied)  # same content elsewhere: its events are duplicates
    result = import_paths(crt.engine, config, [copied])
    assert result.imported == 1 and result.skipped == {"duplicate": 2}
    with crt.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(currents_files)).scalar() == 3


def test_corrupt_and_truncated_files_are_reported_and_the_others_go_on(crt, tmp_path):
    config = CurrentsConfig.from_settings(crt.settings)
    sample = next(p for p in avro_samples() if p.stem == "users.canvas.Entry")
    good = copy_sample(sample, tmp_path / "a-good.avro", count=20)
    whole = tmp_path / "whole.avro"
    copy_sample(sample, whole, count=2000, codec="deflate")
    data = whole.read_bytes()
    whole.unlink()
    (tmp_path / "b-truncated.avro").write_bytes(data[: len(data) // 2])
    (tmp_path / "c-corrupt.avro").write_bytes(b"Obj\x01" + b"\x00garbage" * 50)
    (tmp_path / "d-empty.avro").write_bytes(b"")
    summary = import_paths(crt.engine, config, [tmp_path])
    failed = {p.rsplit("/", 1)[-1] for p, _ in summary.failed}
    assert failed == {"b-truncated.avro", "c-corrupt.avro", "d-empty.avro"}
    assert summary.imported == 1
    assert event_ids(crt.engine) == good  # nothing of the truncated file


def test_the_cli_imports_with_a_summary(make_settings, tmp_path, monkeypatch):
    settings = make_settings(**currents_settings(URL))
    monkeypatch.setenv("AUDIENCE_SYNC_DATABASE__URL", settings.get("database.url"))
    config = tmp_path / "c.toml"
    config.write_text('[currents.feeds.unbound]\nkey = "k"\nsecret = "s"\nplatform = "unbound"\n')
    sample = next(p for p in avro_samples() if p.stem == "users.messages.email.Send")
    copy_sample(
        sample, tmp_path / "in" / "event_type=users.messages.email.Send" / "1.avro", count=5
    )
    (tmp_path / "in" / "bad.avro").write_bytes(b"nope")
    runner = CliRunner()
    result = runner.invoke(
        main, ["--config", str(config), "currents", "import", str(tmp_path / "in")]
    )
    assert result.exit_code == 1, result.output
    assert "bad.avro" in result.output
    assert "files 2 (imported 1, already imported 0, failed 1); events 5; forwarded 5" in (
        result.output
    )
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["forwarded"] == 5 and summary["failed"][0]["path"].endswith("bad.avro")
    again = runner.invoke(
        main,
        [
            "--config",
            str(config),
            "currents",
            "import",
            str(tmp_path / "in" / "event_type=users.messages.email.Send"),
        ],
    )
    assert again.exit_code == 0
    assert "already imported 1" in again.output


def test_currents_watch_imports_the_watch_dir(make_runtime, tmp_path):
    watch = tmp_path / "watch"
    rt = make_runtime(**currents_settings(URL, currents__watch_dir=str(watch)))
    assert currents_watch(rt.engine, rt.settings).files == 0  # not there yet: nothing
    sample = next(p for p in avro_samples() if p.stem == "users.messages.email.Open")
    copy_sample(sample, watch / "x" / "1.avro", count=4)
    assert currents_watch(rt.engine, rt.settings).forwarded == 4
    assert currents_watch(rt.engine, rt.settings).already_imported == 1


def test_the_writer_schema_of_each_file_is_used(crt, tmp_path):
    """A file written with an older schema (fewer fields) still imports."""
    sample = next(p for p in avro_samples() if p.stem == "users.messages.email.Open")
    schema, records = read_sample(sample)
    keep = {"id", "time", "external_user_id", "user_id", "email_address"}
    schema = {**schema, "fields": [f for f in schema["fields"] if f["name"] in keep]}
    record = {k: v for k, v in records[0].items() if k in keep}
    from tests.currents_support import write_avro

    write_avro(tmp_path / "event_type=users.messages.email.Open" / "o.avro", schema, [record])
    summary = import_paths(crt.engine, CurrentsConfig.from_settings(crt.settings), [tmp_path])
    assert summary.forwarded == 1


def test_events_no_feed_takes_are_held_and_reported_as_no_feed(make_runtime, tmp_path):
    rt = make_runtime(
        **currents_settings(URL, feeds={"ios": {"key": "k", "secret": "s", "platform": "ios"}})
    )
    sample = next(p for p in avro_samples() if p.stem == "users.messages.email.Open")
    copy_sample(sample, tmp_path / "f.avro", count=3)
    summary = import_paths(rt.engine, CurrentsConfig.from_settings(rt.settings), [tmp_path])
    assert (summary.forwarded, dict(summary.skipped)) == (0, {"no_feed": 3})
    assert len(event_ids(rt.engine)) == 3  # held, not dropped


def test_dedup_keys_are_claimed_once_within_the_window(database_url):
    """New ids and ids last seen before the window are claimed (their keys refreshed); ids
    seen within the window are not, and keep their time; an id twice in one call counts once."""
    from audience_sync.store import currents as queue
    from audience_sync.store.engine import create_engine
    from audience_sync.store.schema import currents_dedup

    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(currents_dedup),
                [{"event_id": "recent", "seen_at": 950.0}, {"event_id": "old", "seen_at": 10.0}],
            )
            ids = ["new", "recent", "old", "new", *(f"n{i}" for i in range(4100))]
            fresh = queue.claim_new_ids(conn, ids, now=1000.0, window_s=100.0)
            assert fresh == {"new", "old", *(f"n{i}" for i in range(4100))}
            assert queue.claim_new_ids(conn, ["new", "old"], now=1001.0, window_s=100.0) == set()
            seen = dict(
                conn.execute(sa.select(currents_dedup.c.event_id, currents_dedup.c.seen_at)).all()
            )
        assert (seen["recent"], seen["old"], seen["new"]) == (950.0, 1000.0, 1000.0)
        assert len(seen) == 4103
    finally:
        engine.dispose()
