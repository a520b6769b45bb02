"""
Deprecated since txturn 0.2.0: moved to L{txturn.core.peer_policy}.
"""

from txturn._moved import moved

moved(__name__, "txturn.core.peer_policy", ["PeerPolicy"])
