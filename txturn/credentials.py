"""
Deprecated since txturn 0.2.0: moved to L{txturn.auth.credentials}.
"""

from txturn._moved import moved

moved(
    __name__,
    "txturn.auth.credentials",
    [
        "ICredentialSource",
        "StaticCredentials",
        "RestApiCredentials",
        "CredentialChain",
        "NonceManager",
        "long_term_key",
    ],
)
