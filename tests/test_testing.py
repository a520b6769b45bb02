"""
The fakes in L{txturn.testing} are what they claim: each provides the
interfaces of the real thing it stands for.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyClass, verifyObject

from txturn.core.interfaces import (
    IClientChannel,
    IPeerConnection,
    IRelay,
    IRelayAllocator,
    IStreamClientChannel,
    ITcpRelay,
    ITcpRelayAllocator,
)
from txturn.testing import (
    FakePeerConnection,
    FakeRelay,
    FakeRelayAllocator,
    FakeTcpRelay,
    FakeTcpRelayAllocator,
    RecordingClientChannel,
)


class FakeInterfaceTests(SynchronousTestCase):
    def test_fakes_provide_their_interfaces(self) -> None:
        for fake, interface in [
            (RecordingClientChannel, IStreamClientChannel),
            (FakeRelay, IRelay),
            (FakeRelayAllocator, IRelayAllocator),
            (FakePeerConnection, IPeerConnection),
            (FakeTcpRelay, ITcpRelay),
            (FakeTcpRelayAllocator, ITcpRelayAllocator),
        ]:
            verifyClass(interface, fake)

    def test_instances(self) -> None:
        verifyObject(IClientChannel, RecordingClientChannel())
        verifyObject(IRelay, FakeRelay(("192.0.2.1", 50000)))
        verifyObject(IRelayAllocator, FakeRelayAllocator())
        verifyObject(ITcpRelayAllocator, FakeTcpRelayAllocator())
