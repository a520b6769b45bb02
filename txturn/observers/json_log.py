# -*- test-case-name: tests.test_json_log -*-
"""
JSON logs under twistd: one flat JSON object per event and per line, for
a log pipeline (Loki, Elasticsearch, CloudWatch, the journal)::

    twistd -n --logger=txturn.observers.json_log.stdout_observer turn -c /etc/txturn/turnserver.conf
    TXTURN_LOG_FILE=/var/log/txturn/txturn.jsonl \\
        twistd -n --logger=txturn.observers.json_log.file_observer turn -c ...

Each object has C{time} (ISO 8601, UTC), C{level} (debug, info, warn,
error, critical), C{namespace}, the rendered C{message}, and the event's
structured fields by name (C{user}, C{client} as C{host:port}, byte and
packet counts as numbers, C{reason}...); a failure adds C{traceback}.
Twisted's own bookkeeping keys (C{log_*}) are left out, so a line is a
few hundred bytes, not Twisted's raw event with its nested level object.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, formatEvent
from zope.interface import implementer

from txturn.util.files import append_private

#: The variable naming file_observer's file.
FILE_VARIABLE = "TXTURN_LOG_FILE"


def flat(event: dict[str, Any]) -> dict[str, Any]:
    """
    The JSON object of one event.
    """
    when = event.get("log_time")
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
        if isinstance(when, (int, float))
        else None,
        "level": level.name if isinstance(level, type(LogLevel.info)) else "info",
        "namespace": event.get("log_namespace"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record:
            continue
        record[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


@implementer(ILogObserver)
class JsonLines:
    """
    Writes each event as one line of JSON to C{out}, flushed at once.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            self._out.write(json.dumps(flat(event), separators=(",", ":")) + "\n")
            self._out.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must not stop the server


def stdout_observer() -> ILogObserver:
    """
    JSON lines on standard output (systemd's journal, container runtimes).
    """
    return JsonLines(sys.stdout)


def file_observer() -> ILogObserver:
    """
    JSON lines appended to the file in C{$TXTURN_LOG_FILE} (twistd calls
    a C{--logger} factory with no argument).
    """
    path = os.environ.get(FILE_VARIABLE)
    if not path:
        raise SystemExit(f"twistd turn: set {FILE_VARIABLE} to the JSON log file's path")
    try:
        out = append_private(path)
    except OSError as e:
        raise SystemExit(f"twistd turn: cannot write the log file {path}: {e.strerror}") from None
    return JsonLines(out)
