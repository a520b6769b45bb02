"""
Sphinx configuration for txturn's documentation (sphinx-build -W doc out).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))

from txturn import __version__  # noqa: E402

project = "txturn"
author = "The txturn developers"
copyright = "2026, The txturn developers"
version = release = __version__
extensions = ["txturn_options"]
exclude_patterns = ["_build", "examples"]
# sphinx-build -b man doc out: the manual pages, from the same option
# tables as --help.
man_pages = [
    ("man/twistd-turn", "twistd-turn", "TURN/STUN relay server", [author], 8),
    ("man/txturn-admin", "txturn-admin", "manage txturn users and credentials", [author], 8),
]
html_theme = "alabaster"
