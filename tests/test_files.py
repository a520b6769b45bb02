"""
Tests for L{txturn.util.files}, and that the files the server creates are not
world-readable.
"""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from txturn.app.options import Options
from txturn.util.files import append_private


class PrivateFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        # Even with no umask at all.
        self.addCleanup(os.umask, os.umask(0))

    def mode(self, path: str) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    def test_created_0640(self) -> None:
        path = os.path.join(self.directory, "usage.jsonl")
        with append_private(path) as f:
            f.write("one\n")
        with append_private(path) as f:
            f.write("two\n")
        self.assertEqual(self.mode(path), 0o640)
        with open(path) as f:
            self.assertEqual(f.read(), "one\ntwo\n")

    def test_existing_mode_kept(self) -> None:
        path = os.path.join(self.directory, "usage.jsonl")
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        append_private(path).close()
        self.assertEqual(self.mode(path), 0o600)

    def test_usage_file_option(self) -> None:
        """
        --usage-file creates its file 0640 when the options are checked.
        """
        path = os.path.join(self.directory, "records.jsonl")
        options = Options()
        options.parseOptions(["--usage-file", path, "--user", "a:b"])
        self.assertEqual(self.mode(path), 0o640)
