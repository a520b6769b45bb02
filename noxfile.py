"""
The checks CI runs (C{.ci/run}), each in its own virtual environment:

    nox                 # every session but the whole suite
    nox -s tests        # the whole suite, as the README's test command
    nox -s lint types   # some of them

Sessions that run tests run them against txturn as pip installs it,
from a copy of C{tests/} outside the checkout, as C{.ci/test} does.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["lint", "types", "docs", "packaging", "oldest", "newest", "coverage"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

#: The Python every tool runs on, and the newest one setup.cfg claims.
PYTHON = "3.11"
NEWEST = "3.13"
#: The oldest Twisted setup.cfg allows (install_requires).
OLDEST_TWISTED = "23.10.0"
#: In-process tests: the core on a Clock, the codec, the option table,
#: the package's layers; no server process, no real client.
UNIT = [
    "tests.test_allocate_request",
    "tests.test_allocation_table",
    "tests.test_config_file",
    "tests.test_credential_cache",
    "tests.test_credential_policy",
    "tests.test_credentials",
    "tests.test_dtls_guard",
    "tests.test_events",
    "tests.test_files",
    "tests.test_fleet",
    "tests.test_framing",
    "tests.test_fuzz",
    "tests.test_hostile",
    "tests.test_json_log",
    "tests.test_layers",
    "tests.test_limits",
    "tests.test_limits_server",
    "tests.test_log_level",
    "tests.test_option_table",
    "tests.test_policy",
    "tests.test_proxy_protocol.DatagramTests",
    "tests.test_proxy_protocol.ListenerTests",
    "tests.test_proxy_protocol.ParserTests",
    "tests.test_server",
    "tests.test_sessions.FleetSessionsTests",
    "tests.test_sessions.HttpTests",
    "tests.test_sessions.ViewTests",
    "tests.test_sessions.WorkerSessionsTests",
    "tests.test_stream_guard",
    "tests.test_stun",
    "tests.test_tcp_allocation",
    "tests.test_testing",
    "tests.test_usage_records",
    "tests.test_xdp_entries",
]


def _outside(session: nox.Session) -> str:
    """
    A copy of tests/ outside the checkout, to run trial in: every
    C{import txturn} then finds the installed package.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    run = os.path.join(session.create_tmp(), "run")
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(
        os.path.join(here, "tests"),
        os.path.join(run, "tests"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    session.env["TXTURN_SOURCE"] = here
    return run


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """
    The whole suite: the README's test command.
    """
    session.run("bash", ".ci/test", *session.posargs, external=True)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """
    ruff: style, imports, complexity (C90) and bugbear, and formatting.
    """
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "txturn", "tests", "bench", "doc/_ext", "noxfile.py")
    session.run("ruff", "format", "--check", "txturn", "tests", "bench", "doc/_ext", "noxfile.py")


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    """
    mypy --strict over the package, the tests and the benchmarks.
    """
    session.install(".[test,dev]")
    session.run("mypy")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """
    The documentation site and the manual pages build with no warning.
    """
    session.install(".[docs]", "towncrier")
    out = session.create_tmp()
    session.run("sphinx-build", "-E", "-W", "-q", "-b", "html", "doc", os.path.join(out, "html"))
    session.run("sphinx-build", "-E", "-W", "-q", "-b", "man", "doc", os.path.join(out, "man"))
    session.run("towncrier", "build", "--draft", "--version", "next", silent=True)


@nox.session(python=PYTHON)
def packaging(session: nox.Session) -> None:
    """
    The sdist and wheel build, and PyPI would accept their metadata.
    """
    session.install("build", "twine")
    dist = os.path.join(session.create_tmp(), "dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", dist, ".")
    session.run("twine", "check", *[os.path.join(dist, f) for f in os.listdir(dist)])


@nox.session(python=PYTHON)
def oldest(session: nox.Session) -> None:
    """
    The in-process tests with the oldest Twisted setup.cfg allows.
    """
    session.install(".[test]", f"twisted[tls]=={OLDEST_TWISTED}")
    session.run("python", "-c", "import twisted; print('Twisted', twisted.__version__)")
    session.chdir(_outside(session))
    session.run("python", "-m", "twisted.trial", *UNIT)


@nox.session(python=NEWEST)
def newest(session: nox.Session) -> None:
    """
    The in-process tests on the newest Python setup.cfg claims.
    """
    session.install(".[test]")
    session.run("python", "-c", "import sys; print('Python', sys.version)")
    session.chdir(_outside(session))
    session.run("python", "-m", "twisted.trial", *UNIT)


@nox.session(python=PYTHON)
def coverage(session: nox.Session) -> None:
    """
    What the in-process tests execute of the installed package, by
    module; below the floor (62 % when it was set) fails.  The transports,
    the application and the tools are exercised by the integration tests,
    in processes this session does not trace.
    """
    session.install(".[test]", "coverage>=7")
    session.chdir(_outside(session))
    session.run("coverage", "run", "--source=txturn", "-m", "twisted.trial", *UNIT)
    session.run("coverage", "report", "--skip-covered", "--sort=cover", "--fail-under=60")
