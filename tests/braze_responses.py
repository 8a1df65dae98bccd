"""The recorded Braze answers of ``tests/fixtures/braze_responses/`` and their verdict notation.

Each case is one ``/users/track`` answer (status, body, headers) to a request of ``sent`` objects,
with the verdict expected for every object, written as a short string (see the folder's README):

    ack                        acknowledged
    retry:<reason>             retried after backoff; Braze surely did not apply it
    retry?:<reason>            retried after backoff; Braze may have applied it
    dead:<reason>              dead-lettered at once
    drop:<f1,f2>:<reason>      resent at once without the refused fields, which are flagged
    resend:<reason>            resent at once, no attempt spent (a 400 blamed other objects)
    split:<reason>             the request is split to isolate the culprit
    pause                      the key is paused (429); no attempt spent
    suspend:<reason>           the workspace is suspended (401/403)
    config:<reason>            configuration error: suspended and reported
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field
from pathlib import Path

from audience_sync.braze.outcomes import Kind, ObjectOutcome, TrackOutcome, Verdict

FOLDER = Path(__file__).resolve().parent / "fixtures" / "braze_responses"


@dataclass(frozen=True, kw_only=True)
class RecordedResponse:
    """One recorded answer and the verdict expected for each object of its request."""

    id: str
    source: str
    status: int
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)
    sent: int
    expect: tuple[str, ...]


def load_sources() -> dict[str, dict[str, str]]:
    """Where every case comes from (repository, path, commit, or a URL)."""
    return json.loads((FOLDER / "sources.json").read_text())


def load_cases() -> list[RecordedResponse]:
    """Every recorded answer, in file order."""
    cases = []
    for raw in json.loads((FOLDER / "responses.json").read_text()):
        if "raw" in raw:
            content = raw["raw"].encode()
        else:
            content = json.dumps(raw["body"]).encode()
        cases.append(
            RecordedResponse(
                id=raw["id"],
                source=raw["source"],
                status=raw["status"],
                content=content,
                headers=raw.get("headers", {}),
                sent=raw["sent"],
                expect=tuple(raw["expect"]),
            )
        )
    return cases


def _object_notation(outcome: ObjectOutcome) -> str:
    if outcome.verdict == Verdict.DEAD_LETTER:
        return f"dead:{outcome.reason}"
    if outcome.verdict == Verdict.DROP_FIELD:
        return f"drop:{','.join(outcome.fields)}:{outcome.reason}"
    if outcome.verdict == Verdict.RESEND:
        return f"resend:{outcome.reason}"
    mark = "retry?" if outcome.maybe_applied else "retry"
    return f"{mark}:{outcome.reason}"


def notation(outcome: TrackOutcome, sent: int) -> tuple[str, ...]:
    """The verdict of every object of a request, in the notation of the fixtures."""
    whole: dict[str, t.Callable[[], str]] = {
        Kind.ACCEPTED: lambda: "ack",
        Kind.RETRY_ALL: lambda: f"retry?:{outcome.reason}",
        Kind.RATE_LIMITED: lambda: "pause",
        Kind.SPLIT: lambda: f"split:{outcome.reason}",
        Kind.BAD_REQUEST: lambda: f"dead:{outcome.reason}",
        Kind.SUSPEND: lambda: f"suspend:{outcome.reason}",
        Kind.CONFIG_ERROR: lambda: f"config:{outcome.reason}",
    }
    if outcome.kind == Kind.PARTIAL:
        return tuple(
            "ack" if (o := outcome.verdict_of(i)) is None else _object_notation(o)
            for i in range(sent)
        )
    return (whole[outcome.kind](),) * sent
