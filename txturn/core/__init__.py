"""
The sans-io TURN core: the server that decodes and dispatches,
allocations, their table, peer policy, and the methods
(L{txturn.core.methods}). No socket, no global reactor.
"""
