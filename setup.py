"""
The two things setup.cfg cannot say: the optional C fast path, and the
optional XDP program (C{--xdp}).

C{optional=True} makes a failed compile (no compiler, no Python headers,
not Linux) a warning: the package then installs without
C{txturn.fastpath._forwarder} and relays on the pure Python path.  The
extension is built into the wheel only, never beside the sources: the
tests run against the installed package (C{.ci/test}).

The XDP program (C{txturn/fastpath/xdp_relay.bpf.c}) is compiled the same
way, into the wheel, by clang for the BPF target, when clang and the
headers of libbpf and Linux are there (Debian: C{apt install clang
libbpf-dev}); without them the package installs without it and
C{--xdp} says so in one line at start.
"""

import os
import shutil
import subprocess
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

BPF_SOURCE = os.path.join("txturn", "fastpath", "xdp_relay.bpf.c")
BPF_OBJECT = os.path.join("txturn", "fastpath", "xdp_relay.bpf.o")


class build_py_with_bpf(build_py):
    def run(self):
        super().run()
        clang = shutil.which("clang") or next(
            (shutil.which(f"clang-{v}") for v in range(20, 13, -1) if shutil.which(f"clang-{v}")),
            None,
        )
        if clang is None:
            self.warn("no clang: the XDP program (--xdp) is not built")
            return
        target = os.path.join(self.build_lib, BPF_OBJECT)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        includes = []
        multiarch = sysconfig.get_config_var("MULTIARCH")
        if multiarch:
            includes.append(f"-I/usr/include/{multiarch}")
        command = [
            clang, "-O2", "-g", "-Wall", "-target", "bpf", *includes,
            "-c", BPF_SOURCE, "-o", target,
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as e:
            self.warn(f"the XDP program (--xdp) is not built: {e.stderr.strip()[-500:]}")


setup(
    cmdclass={"build_py": build_py_with_bpf},
    ext_modules=[
        Extension(
            "txturn.fastpath._forwarder",
            ["txturn/fastpath/_forwarder.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
