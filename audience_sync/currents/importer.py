"""``audience-sync currents import PATH...`` and the ``currents_watch`` job (SPEC §6.2, §7).

Files and directory trees are walked in name order; each file is imported once, recorded by
path and checksum. One transaction per file: its events (cut into mParticle batches at once),
its dedup keys, its counts and its record commit together, so a killed import never leaves half
of a file imported, and a file is never imported twice. A corrupt or truncated file is reported
with its path and the others go on.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from audience_sync.core.currents.events import InvalidEventError, from_record
from audience_sync.core.currents.mapping import Skip
from audience_sync.currents.avro import AvroFileError, read_records
from audience_sync.currents.service import CurrentsConfig, file_checksum, prepare, store_events
from audience_sync.store import currents as queue
from audience_sync.store.transactions import in_transaction

logger = logging.getLogger(__name__)

AVRO_SUFFIX = ".avro"


@dataclass(frozen=True, kw_only=True)
class FileResult:
    """One file's outcome: ``status`` is imported, already_imported or failed."""

    path: str
    status: str
    events: int = 0
    forwarded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass(kw_only=True)
class ImportSummary:
    """Totals of one import run."""

    files: int = 0
    imported: int = 0
    already_imported: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    events: int = 0
    forwarded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, result: FileResult) -> None:
        self.files += 1
        if result.status == "imported":
            self.imported += 1
        elif result.status == "already_imported":
            self.already_imported += 1
        else:
            self.failed.append((result.path, result.error or "failed"))
        self.events += result.events
        self.forwarded += result.forwarded
        self.skipped.update(result.skipped)

    def to_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "imported": self.imported,
            "already_imported": self.already_imported,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "events": self.events,
            "forwarded": self.forwarded,
            "skipped": dict(self.skipped),
        }


def find_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Every ``.avro`` file under ``paths`` (files given directly are taken whatever their
    name), in a stable order; missing paths raise ``FileNotFoundError``."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob(f"*{AVRO_SUFFIX}") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(str(path))


def import_file(
    engine: sa.Engine,
    path: Path,
    config: CurrentsConfig,
    *,
    clock: Callable[[], float] = time.time,
) -> FileResult:
    """Import one file in one transaction (or say why not)."""
    name = str(path.resolve())
    try:
        data = path.read_bytes()
    except OSError as exc:
        return FileResult(path=name, status="failed", error=f"unreadable: {exc.strerror}")
    checksum = file_checksum(data)
    with engine.connect() as conn:
        if queue.is_imported(conn, name, checksum):
            return FileResult(path=name, status="already_imported")
    try:
        event_type, records = read_records(data, name)
    except AvroFileError as exc:
        logger.warning(
            "currents file not imported: %s",
            name,
            extra={"action": "currents_file_failed", "path": name, "error": str(exc)[:300]},
        )
        return FileResult(path=name, status="failed", error=str(exc)[:300])
    events = []
    skipped: Counter[str] = Counter()
    for record in records:
        try:
            events.append(from_record(record, event_type))
        except InvalidEventError:
            skipped[Skip.INVALID_EVENT] += 1
    ready, mapping_skips = prepare(events, config)
    skipped.update(mapping_skips)
    now = clock()

    def work(conn: sa.Connection) -> FileResult:
        result = store_events(
            conn, ready, Counter(skipped), received=len(records), config=config, now=now
        )
        if not queue.record_file(
            conn,
            path=name,
            checksum=checksum,
            size=len(data),
            events=len(records),
            forwarded=result.forwarded,
            skipped=result.not_forwarded(),
            now=now,
        ):
            raise _AlreadyImportedError
        return FileResult(
            path=name,
            status="imported",
            events=len(records),
            forwarded=result.forwarded,
            skipped=result.not_forwarded(),
        )

    try:
        result = in_transaction(engine, work, action="currents_import")
    except _AlreadyImportedError:
        return FileResult(path=name, status="already_imported")
    logger.info(
        "currents file imported",
        extra={
            "action": "currents_file_imported",
            "path": name,
            "event_type": event_type,
            "events": result.events,
            "forwarded": result.forwarded,
            "skipped": result.skipped,
        },
    )
    return result


class _AlreadyImportedError(Exception):
    """Another importer recorded the same file first: this transaction rolls back."""


def import_paths(
    engine: sa.Engine,
    config: CurrentsConfig,
    paths: Sequence[str | os.PathLike[str]],
    *,
    on_file: Callable[[FileResult], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> ImportSummary:
    """Import every Avro file under ``paths``; ``on_file`` sees each result (progress)."""
    summary = ImportSummary()
    for path in find_files(paths):
        result = import_file(engine, path, config, clock=clock)
        summary.add(result)
        if on_file is not None:
            on_file(result)
    return summary


def currents_watch(engine: sa.Engine, settings: object) -> ImportSummary:
    """The scheduler's ``currents_watch`` job: import new files of ``currents.watch_dir``.

    ``settings`` is the process's :class:`~audience_sync.settings.Settings`. Does nothing when
    no directory is configured or it does not exist yet.
    """
    watch_dir = settings.get("currents.watch_dir")  # type: ignore[attr-defined]
    if not watch_dir or not Path(watch_dir).is_dir():
        return ImportSummary()
    return import_paths(engine, CurrentsConfig.from_settings(settings), [watch_dir])  # type: ignore[arg-type]
