# -*- test-case-name: tests.test_log_level -*-
"""
The level below which txturn's own log events are dropped before any
observer sees them (C{--log-level}; coturn's C{verbose}).

Every txturn L{Logger} is made by L{logger}, which sends its events
through one L{FilteringLogObserver}: a debug line about a malformed
packet costs one comparison at the default level, and never reaches
twistd's log file, whatever observers the host application has.
"""

from __future__ import annotations

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

#: The names C{--log-level} accepts.
LEVELS = {level.name: level for level in LogLevel.iterconstants()}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])


def logger(namespace: str | None = None) -> Logger:
    """
    A L{Logger} for a txturn class attribute: its namespace is the
    class's, as with a plain C{Logger()}, and its events are filtered by
    level.
    """
    return Logger(namespace, observer=_observer)


def set_log_level(level: LogLevel) -> None:
    """
    Let through txturn's events at C{level} and above.
    """
    _predicate.setLogLevelForNamespace("", level)


def log_level() -> LogLevel:
    level: LogLevel = _predicate.logLevelForNamespace("")
    return level
