"""
Deprecated since txturn 0.2.0: moved to L{txturn.auth.cache}.
"""

from txturn._moved import moved

moved(__name__, "txturn.auth.cache", ["CachedCredentials"])
