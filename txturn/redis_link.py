"""
Deprecated since txturn 0.2.0: moved to L{txturn.fleet.link}.
"""

from txturn._moved import moved

moved(__name__, "txturn.fleet.link", ["RedisLink"])
