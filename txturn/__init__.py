"""
txturn: a TURN/STUN relay server on Twisted, usable as a twistd plugin
(C{twistd turn}) or as a library (L{txturn.app.service.TurnService}).
"""

__version__ = "0.1.0"
