"""
Tests for L{txturn.util.log_level}.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txturn.util.log_level import log_level, logger, set_log_level


class Example:
    log = logger()


class LogLevelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.addCleanup(set_log_level, log_level())

    def test_default_drops_debug(self) -> None:
        """
        At the default level (info) a debug event reaches no observer;
        info and above do, in the class's namespace.
        """
        set_log_level(LogLevel.info)
        Example().log.debug("per packet")
        Example().log.info("allocated")
        Example().log.warn("careful")
        self.assertEqual([e["log_format"] for e in self.events], ["allocated", "careful"])
        self.assertEqual(self.events[0]["log_namespace"], f"{__name__}.Example")

    def test_levels(self) -> None:
        """
        --log-level debug lets everything through; error only errors.
        """
        set_log_level(LogLevel.debug)
        Example.log.debug("per packet")
        set_log_level(LogLevel.error)
        Example.log.warn("careful")
        Example.log.error("broken")
        self.assertEqual([e["log_format"] for e in self.events], ["per packet", "broken"])
