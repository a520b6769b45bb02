"""
The sessions API: who is on this server now, and ending their sessions
(C{--admin-port}); L{view} says what a session is, L{http} serves it,
L{service} listens.
"""

#: Shortest token accepted: a bearer token is the only thing between the
#: network and ending calls.
MIN_TOKEN_LENGTH = 16
