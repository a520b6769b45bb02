"""
Deprecated since txturn 0.2.0: moved to L{txturn.core.events}.
"""

from txturn._moved import moved

moved(
    __name__,
    "txturn.core.events",
    [
        "IServerObserver",
        "Traffic",
        "AllocationCreated",
        "AllocationRefreshed",
        "AllocationDeleted",
        "PermissionInstalled",
        "PermissionExpired",
        "ChannelBound",
        "ChannelExpired",
        "DataConnectionOpened",
        "DataConnectionClosed",
        "RequestAnswered",
        "AuthenticationFailed",
    ],
)
