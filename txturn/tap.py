# -*- test-case-name: tests.test_tap,tests.test_signals -*-
"""
C{twistd turn}: the plugin's options (L{Options}) and L{makeService},
which checks what would stop the server, says what it will run, and
builds one server (L{txturn.app.assembly}) or the supervisor of
C{--workers N} (L{txturn.workers.supervisor}).
"""

from __future__ import annotations

from typing import Any

from txturn.app.assembly import build_service
from txturn.app.listeners import StartupError
from txturn.app.options import SECRET_VARIABLE, Options
from txturn.app.reload import Reloader
from txturn.app.settings import Backends, credentials_for
from txturn.app.startup import keep_root_reader, preflight, summarize
from txturn.util.log_level import govern_twistd_logging, logger, set_log_level

__all__ = ["Options", "Reloader", "makeService", "SECRET_VARIABLE"]

_log = logger("txturn.tap")


def makeService(options: Options, reactor: Any = None) -> Any:
    """
    The service C{options} describe: a L{txturn.app.service.TurnService}
    that reloads on SIGHUP and SIGUSR2 and drains on SIGQUIT, or with
    C{--workers} above 1 the L{txturn.workers.supervisor.Supervisor} of
    that many, each of which builds its own.

    Called by C{twistd} (with no reactor), it first checks what would
    stop the server once started (listening ports, relay addresses, the
    log file) and exits with one line for the first problem, before
    twistd forks into the background or starts logging: an operator sees
    the reason on the terminal, never a traceback.
    """
    if reactor is None:
        try:
            preflight(options)
        except StartupError as e:
            raise SystemExit(f"twistd turn: {e}") from None
        keep_root_reader(options)
        govern_twistd_logging()
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    set_log_level(options["log-level"])
    for warning in options["config-warnings"]:
        _log.warn("{problem}", problem=warning)
    summarize(options)
    if options["workers"] > 1:
        # Imported here only: one process needs neither AMP nor twisted.web.
        from txturn.workers.supervisor import supervise

        return supervise(options, reactor, credentials_for(options, Backends())[1])
    return build_service(options, reactor)
