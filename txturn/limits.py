"""
Deprecated since txturn 0.2.0: moved to L{txturn.transports.admission}.
"""

from txturn._moved import moved

moved(__name__, "txturn.transports.admission", ["ConnectionLimits"])
