"""Logging set-up: readable lines on a terminal, one JSON object per line otherwise (SPEC §8).

Structured fields travel in ``extra=`` (``action`` from a fixed vocabulary, counts and ids),
never payloads or secrets.
"""

from __future__ import annotations

import json
import logging
import logging.config
import sys
import time

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_MASK = "***"
_secrets: tuple[str, ...] = ()


def _redact(text: str) -> str:
    """Replace every configured secret in a rendered line (a last line of defence: the code
    never logs secrets, but an exception message might carry one)."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record with the ``extra`` fields at top level."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a single JSON line."""
        body: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                body[key] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return _redact(json.dumps(body, default=str))


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as one readable line."""
        extras = " ".join(
            f"{k}={v}"
            for k, v in vars(record).items()
            if k not in _STANDARD and not k.startswith("_")
        )
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _redact(line)


def configure_logging(
    level: str = "INFO", *, json_lines: bool | None = None, secrets: tuple[str, ...] = ()
) -> None:
    """Configure the root logger once, at process start; ``secrets`` are masked in every line
    (``Settings.secret_values()``)."""
    global _secrets
    # Longest first, so a secret containing another is masked whole; very short values would
    # mask ordinary words.
    _secrets = tuple(sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True))
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    formatter = "json" if json_lines else "text"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "json": {"()": JsonFormatter},
                "text": {"()": TextFormatter},
            },
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": formatter,
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"level": level.upper(), "handlers": ["stderr"]},
            "loggers": {"waitress.queue": {"level": "ERROR"}},
        }
    )
