# -*- test-case-name: tests.test_probe -*-
"""
The C{txturn-probe} command (also C{python -m txturn.tools.probe}): its
arguments, where secrets come from, and the exit status.  What it checks
is L{txturn.tools.probing}; C{--audit} runs L{txturn.tools.audit}.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

from txturn import __version__
from txturn.auth.credentials import REST_HMACS, rest_api_password
from txturn.tools.argv_secrets import first_line, from_environment, warn_on_argv
from txturn.tools.audit import Audit, table
from txturn.tools.probing import Connection, Probe, ProbeFailed, Redirected, Report, TurnUri
from txturn.util.printable import printable

__all__ = ["Connection", "Probe", "ProbeFailed", "Redirected", "Report", "TurnUri", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="txturn-probe",
        description="Check a TURN server end to end (any server, not only txturn).",
    )
    parser.add_argument("uri", help="turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]")
    parser.add_argument("-u", "--user", help="username (with --secret: the name after expiry:)")
    parser.add_argument("-w", "--password", help=f"password [${PASSWORD_VARIABLE}]")
    parser.add_argument("--password-file", help="a file whose first line is the password")
    parser.add_argument(
        "--secret",
        help=f"TURN REST API secret: the probe makes its own name [${SECRET_VARIABLE}]",
    )
    parser.add_argument("--secret-file", help="a file whose first line is the REST secret")
    parser.add_argument(
        "--hmac",
        choices=REST_HMACS,
        default="sha1",
        help="the server's --rest-api-hmac, for a REST secret [sha1]",
    )
    parser.add_argument(
        "--peer", help="the address the server should relay to (default: the mapped host)"
    )
    parser.add_argument("-n", "--count", type=int, default=10, help="round trips [10]")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per answer [3]")
    parser.add_argument("--ca-file", help="CA certificates to verify a turns: server with")
    parser.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    parser.add_argument("--sha256", action="store_true", help="use SHA-256 passwords")
    parser.add_argument(
        "--audit",
        action="store_true",
        help="ask for every peer address form a relay must refuse, and report what is granted",
    )
    parser.add_argument("--version", action="version", version=f"txturn-probe {__version__}")
    args = parser.parse_args(argv)
    try:
        uri = TurnUri.parse(args.uri)
    except ValueError as e:
        parser.error(str(e))
    secret, password = _secrets(args)
    if secret:
        username = f"{int(time.time()) + 3600}:{args.user or 'txturn-probe'}"
        password = rest_api_password(secret, username, args.hmac)
    elif args.user and password is not None:
        username = args.user
    else:
        parser.error(
            f"give --user and a password (--password-file, ${PASSWORD_VARIABLE}), "
            f"or a REST secret (--secret-file, ${SECRET_VARIABLE})"
        )
    probe = Probe(
        uri,
        username,
        password,
        peer_host=args.peer,
        count=args.count,
        timeout=args.timeout,
        ca_file=args.ca_file,
        insecure=args.insecure,
        sha256=args.sha256,
    )
    if args.audit:
        return _audit(probe)
    try:
        report = probe.run()
    except ProbeFailed as e:
        shown = probe.report.table() + "\n" if probe.report.rows else ""
        sys.stdout.write(printable(shown, keep="\n"))
        sys.stderr.write(f"FAILED at {printable(str(e))}\n")
        return 1
    sys.stdout.write(printable(report.table(), keep="\n") + "\nOK\n")
    return 0


#: Where txturn-probe finds a password and a REST secret not given on
#: the command line (the server's own variable, for the secret).
PASSWORD_VARIABLE = "TXTURN_PROBE_PASSWORD"
SECRET_VARIABLE = "TXTURN_STATIC_AUTH_SECRET"


def _secrets(args: Any) -> tuple[str | None, str | None]:
    """
    The REST secret and the password, each from its file, the command
    line (with a warning) or the environment.
    """
    if args.secret_file is not None:
        secret: str | None = first_line(args.secret_file)
    elif args.secret:
        warn_on_argv("txturn-probe", "--secret", f"--secret-file or ${SECRET_VARIABLE}")
        secret = args.secret
    else:
        secret = from_environment(SECRET_VARIABLE) if args.password is None else None
    if args.password_file is not None:
        password: str | None = first_line(args.password_file)
    elif args.password is not None:
        warn_on_argv("txturn-probe", "--password", f"--password-file or ${PASSWORD_VARIABLE}")
        password = args.password
    else:
        password = from_environment(PASSWORD_VARIABLE)
    return secret, password


def _audit(probe: Probe) -> int:
    """
    Exit status 0 when every form was refused, 3 when any was granted, 1
    when the audit could not run.
    """
    try:
        rows = Audit(probe).run()
    except (ProbeFailed, OSError) as e:
        sys.stderr.write(f"FAILED: {printable(str(e))}\n")
        return 1
    granted = [row for row in rows if row.granted]
    untested = [row for row in rows if row.result.startswith("untested")]
    sys.stdout.write(printable(table(rows), keep="\n") + "\n")
    if len(untested) == len(rows):
        sys.stderr.write("FAILED: nothing could be tested\n")
        return 1
    if granted:
        sys.stdout.write(f"{len(granted)} FINDINGS: the server granted what a relay must refuse\n")
        return 3
    sys.stdout.write(f"no finding: every form tested was refused ({len(untested)} untested)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
