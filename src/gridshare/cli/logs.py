"""Log lines of ``gridshare serve``: one line per event, whatever the terminal or file.

Plain ``logging`` to stderr, never rich: a log line is not wrapped at the terminal's width
(nor at 80 columns in a pipe or a file), and a message or traceback that spans lines is
kept on one line, so ``grep`` and log shippers see one event per line. ``json`` writes one
object per line (``ts``, ``level``, ``logger``, ``message`` and any ``extra=`` fields).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")

_STANDARD = frozenset({*vars(logging.makeLogRecord({})), "message", "asctime"})
"""Attributes every LogRecord has; the others came from ``extra=``."""


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """``2026-11-22 08:00:00,000 WARNING gridshare.x: message key=value``, on one line."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return _one_line(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            event.setdefault(key, value)
        if record.exc_info:
            event["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            event["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot hold (a datetime, a path) as text
        return json.dumps(event, ensure_ascii=False, default=str)


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr), one per line."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
