"""
txturn's test suite.

The suite runs against txturn as C{pip install} installs it: C{.ci/test}
builds the wheel, installs it in a fresh virtual environment, copies this
directory somewhere outside the checkout and runs trial there, so that
C{import txturn} (here and in every process a test starts) finds the
installed package, never the sources.

Some tests read files that the package does not install (the docs, the
deploy files, the benchmarks, the C source for the sanitizer build):
those come from L{SOURCE}, the checkout, which C{.ci/test} names in
C{$TXTURN_SOURCE}.
"""

from __future__ import annotations

import os

SOURCE = os.environ.get("TXTURN_SOURCE") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)


def source_path(*parts: str) -> str:
    """
    The path of a file in the checkout (C{doc/}, C{deploy/}, C{bench/},
    C{setup.cfg}, ...), which the installed package does not carry.
    """
    return os.path.join(SOURCE, *parts)
