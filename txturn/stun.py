"""
Deprecated since txturn 0.2.0: moved to L{txturn.wire.stun}.
"""

from txturn._moved import moved

moved(
    __name__,
    "txturn.wire.stun",
    [
        "Attr",
        "Class",
        "Message",
        "Method",
        "PasswordAlgorithm",
        "StunDecodeError",
        "decode",
        "encode",
    ],
)
