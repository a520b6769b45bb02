"""
Deprecated since txturn 0.2.0: moved to L{txturn.core.server}.
"""

from txturn._moved import moved

moved(__name__, "txturn.core.server", ["TurnServer", "ServerConfig", "user_quota_for"])
