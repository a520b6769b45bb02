# -*- test-case-name: tests.test_json_log -*-
"""
JSON logs under twistd: every event as one JSON object per line, with
its structured fields (addresses, users, byte counts, reasons), for a
log pipeline.

    twistd -n --logger=txturn.json_log.stdout_observer turn -c /etc/turnserver.conf

(C{twist} has C{--log-format=json} for the same.)  twistd calls the
factory with no argument; standard output suits systemd's journal and
container runtimes, which keep the lines.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def stdout_observer() -> ILogObserver:
    """
    A JSON-lines observer on standard output.
    """
    observer: ILogObserver = jsonFileLogObserver(sys.stdout, recordSeparator="")
    return observer
