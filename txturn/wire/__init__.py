"""
The STUN and TURN wire formats: the message codec and stream framing. No
state, no I/O.
"""
