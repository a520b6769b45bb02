"""
Command-line tools beside the server: txturn-probe, txturn-admin, the
audit, and the STUN client they use.
"""
