"""The relay's log: text for people (the default), or one JSON object per line (``--log-format json``).

A JSON line has ``time`` (UTC, ISO 8601, milliseconds), ``level``,
``event`` (a short name such as ``socket_connected``; ``log`` for lines
that have none), ``message`` (the text line's message), and, when the
line is about one, ``app``, ``socket`` or ``pipe`` (ids) and ``fields``
(anything else, as an object). A traceback, if any, is ``exception``.

Lines get their event and ids from :func:`fields`, passed as ``extra``::

    log.info("socket %s connected", socket_id, extra=fields("socket_connected", socket=socket_id, app="1"))

At ``info`` the relay logs connections opening and closing, refusals,
reloads and errors, never anything per message (docs/relay.md, "Logs").
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

__all__ = ["TEXT_FORMAT", "JsonFormatter", "fields", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_IDS = ("app", "socket", "pipe")


def fields(event: str, *, app: str | None = None, socket: str | None = None, pipe: str | None = None,
           **more: Any) -> dict[str, Any]:
    """The ``extra`` of a log call: its event name, the ids it is about, and other fields."""
    extra: dict[str, Any] = {"event": event}
    for name, value in (("app", app), ("socket", socket), ("pipe", pipe)):
        if value is not None:
            extra[name] = value
    if more:
        extra["fields"] = more
    return extra


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module's docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's JSON line (without the newline)."""
        seconds = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z"
        entry: dict[str, Any] = {
            "time": stamp,
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
            "logger": record.name,
        }
        for name in _IDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        more = getattr(record, "fields", None)
        if more:
            entry["fields"] = more
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "info", format: str = "text", stream: TextIO | None = None) -> None:
    """Send every log line to ``stream`` (stderr) in ``format`` (``text`` or ``json``), from ``level`` up."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
