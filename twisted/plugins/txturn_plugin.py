"""
The C{twistd turn} plugin; everything it names is imported lazily.
"""

from twisted.application.service import ServiceMaker

TxTurn = ServiceMaker("txturn", "txturn.tap", "A TURN/STUN relay server (RFC 8656).", "turn")
