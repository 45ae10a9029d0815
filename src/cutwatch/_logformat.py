"""Log lines for machines: one JSON object per line (``cutwatch collector --log-format json``).

Keys that are always there: ``time`` (ISO 8601, UTC, milliseconds),
``level``, ``logger``, ``message``; then whatever the call passed as
``extra`` (``epoch``, ``check``, ``status``, ...), under its own name, and
``exception`` with the traceback when there is one. A value JSON cannot
hold is written as its ``str()``. Standard library only, so that a log
shipper needs no schema beyond this.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, TextIO

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "json_line"]

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset({*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"})
"""Attributes every record has: anything else on a record came from ``extra``."""
_FIRST = ("time", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: the keys above, then its extras."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key not in _FIRST and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


def configure_logging(level: int, log_format: str = "text", stream: TextIO | None = None) -> None:
    """Send the root logger's records to ``stream`` (stderr) as text or JSON lines."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def json_line(
    message: str,
    level: int = logging.INFO,
    extra: Mapping[str, object] | None = None,
    logger: str = "cutwatch.cli",
) -> str:
    """``message`` as one JSON log line, for what a command says outside logging (where it listens)."""
    record = logging.LogRecord(logger, level, "", 0, message, (), None)
    record.__dict__.update(extra or {})
    return JsonFormatter().format(record)
