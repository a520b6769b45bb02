"""
The TURN methods, each with the state it needs
(L{txturn.core.state.CoreState}): Allocate and Refresh, the peer
methods, and RFC 6062.
"""
