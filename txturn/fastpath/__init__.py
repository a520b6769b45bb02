"""
The compiled fast path: forwarding entries the core installs, and the C
loop that reads UDP sockets through them.
"""
