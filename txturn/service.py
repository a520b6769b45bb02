"""
The library entry point: L{TurnService}, the TURN server a host
application adds to its own service tree (C{doc/library.rst}).  It is
assembled in L{txturn.app.service}; this module is the name to import.
"""

from txturn.app.announce import ice_servers_snippet
from txturn.app.listeners import StartupError
from txturn.app.service import TurnService

__all__ = ["StartupError", "TurnService", "ice_servers_snippet"]
