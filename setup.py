"""
The one thing setup.cfg cannot say: the optional C fast path.

C{optional=True} makes a failed compile (no compiler, no Python headers,
not Linux) a warning: the package then installs without
C{txturn.fastpath._forwarder} and relays on the pure Python path.  The extension
is built into the wheel only, never beside the sources: the tests run
against the installed package (C{.ci/test}).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "txturn.fastpath._forwarder",
            ["txturn/fastpath/_forwarder.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
