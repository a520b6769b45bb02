"""
Deprecated since txturn 0.2.0: moved to L{txturn.auth.policy}.
"""

from txturn._moved import moved

moved(__name__, "txturn.auth.policy", ["mint_credential"])
