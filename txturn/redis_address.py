"""
Deprecated since txturn 0.2.0: moved to L{txturn.fleet.address}.
"""

from txturn._moved import moved

moved(__name__, "txturn.fleet.address", ["parse_redis_url"])
