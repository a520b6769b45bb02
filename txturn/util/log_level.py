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

from typing import Any, cast

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    globalLogBeginner,
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


def _admits(event: dict[str, Any]) -> PredicateResult:
    """
    Whether an event of any library passes C{--log-level}: Twisted's own
    chatter ("... starting on 3478", "(UDP Port 3478 Closed)", "Main loop
    terminated", twistd's banner) counts as debug; its warnings and
    errors keep their level.
    """
    level = event.get("log_level") or LogLevel.info
    namespace = event.get("log_namespace") or ""
    if level == LogLevel.info and not namespace.startswith("txturn"):
        level = LogLevel.debug
    passes: bool = level >= log_level()
    return cast(PredicateResult, PredicateResult.yes if passes else PredicateResult.no)


def gate(observer: ILogObserver) -> ILogObserver:
    """
    C{observer}, seeing only the events C{--log-level} lets through,
    whatever library logged them.
    """
    gated: ILogObserver = FilteringLogObserver(observer, [cast(ILogFilterPredicate, _admits)])
    return gated


def govern_twistd_logging(beginner: Any = globalLogBeginner) -> None:
    """
    Make C{--log-level} govern every line twistd logs, not only txturn's:
    the observers twistd is about to start logging to (its log file, or
    C{--logger}'s) are each wrapped in L{gate}.  Called by C{twistd turn}
    before twistd starts logging; the events buffered until then go
    through the gate too.
    """
    begin = beginner.beginLoggingTo
    if getattr(begin, "gated", False):
        return

    def gated(observers: Any, *args: Any, **kwargs: Any) -> Any:
        return begin([gate(o) for o in observers], *args, **kwargs)

    gated.gated = True  # type: ignore[attr-defined]
    beginner.beginLoggingTo = gated
