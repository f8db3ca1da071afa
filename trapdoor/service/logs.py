"""The one logging set-up of every ``serve``: readable text or JSON lines, never colour in files.

Every service logs through the standard :mod:`logging` tree; :func:`configure_logging`
puts one handler on the root logger so the services' own events (``trapdoor.*``) and
Werkzeug's request lines land in the same stream with the same format:

- ``text`` (default): ``2024-06-11T10:00:00Z INFO trapdoor.ps.rounds: job j round 0 ...``;
- ``json``: one object per line with ``time``, ``level``, ``logger`` and ``message`` (and
  ``exception`` when there is one), for a log shipper.

Werkzeug colours its request lines by status code whenever the platform can
(``werkzeug.serving._log_add_style``), whatever the stream is; a log file or a pipe then
holds ``\\x1b[...m`` codes. So the flag follows the stream (on only for a terminal), and
the formatters strip any escape that still gets through, from whatever logger.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import IO, Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "TextFormatter", "configure_logging"]

#: The values of ``--log-format``.
LOG_FORMATS = ("text", "json")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _utc(created: float) -> str:
    """ISO 8601 UTC with milliseconds: sortable, and the same on every host."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


class TextFormatter(logging.Formatter):
    """``time level logger: message``, with terminal escapes removed unless ``colour``."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_utc(record.created)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line if self.colour else _plain(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message`` (plain text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _plain(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = _plain(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def configure_logging(
    log_format: str = "text", stream: IO[str] | None = None, level: int = logging.INFO
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (default stderr) in
    ``log_format``; returns the handler. Replaces the handler of an earlier call, so a
    process (or a test) that serves twice does not log each line twice."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    target = sys.stderr if stream is None else stream
    tty = _is_tty(target)
    handler = logging.StreamHandler(target)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(colour=tty))
    handler.set_name("trapdoor")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "trapdoor"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    _werkzeug_colour(tty and log_format == "text")
    return handler


def _werkzeug_colour(on: bool) -> None:
    """Werkzeug decides colour by platform alone; turn it off unless the stream is a
    terminal (never on where Werkzeug itself found it cannot colour)."""
    from werkzeug import serving

    if not on and hasattr(serving, "_log_add_style"):
        serving._log_add_style = False
