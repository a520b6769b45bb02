"""
Deprecated since txturn 0.2.0: moved to L{txturn.observers.json_log}.
"""

from txturn._moved import moved

moved(__name__, "txturn.observers.json_log", ["stdout_observer", "file_observer"])
