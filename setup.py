"""
The one thing setup.cfg cannot say: the optional C fast path.

C{optional=True} makes a failed compile (no compiler, no Python headers,
not Linux) a warning: the package then installs without
C{txturn._forwarder} and relays on the pure Python path.

A built extension is also copied beside the sources, so that the tests
run from a checkout (C{pip install '.[test]' && python -m twisted.trial
tests}, where the checkout's C{txturn} comes first on C{sys.path}) run
the compiled path that was just built, not only the installed copy.
"""

import os
import shutil

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildExt(build_ext):
    def run(self) -> None:
        super().run()
        if self.inplace:
            return
        for extension in self.extensions:
            built = self.get_ext_fullpath(extension.name)
            beside = os.path.join(HERE, self.get_ext_filename(extension.name))
            if os.path.exists(built) and os.path.isdir(os.path.dirname(beside)):
                # A new file renamed into place, never a rewrite of the
                # old one: a process that has the old one loaded (a test
                # that builds the wheel, say) keeps its mapping intact.
                fresh = beside + ".new"
                shutil.copyfile(built, fresh)
                os.replace(fresh, beside)


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            "txturn._forwarder",
            ["txturn/_forwarder.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
