"""
Twisted protocols that frame bytes for the core: UDP, TCP and TLS
streams, DTLS, admission control, and the relays.
"""
