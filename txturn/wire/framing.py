# -*- test-case-name: tests.test_framing -*-
"""
Cutting STUN messages and ChannelData out of a TCP or TLS byte stream.

On a stream, each message says its own length: STUN in its header (plus
20), ChannelData in its length field (plus 4, padded to a multiple of 4).
Anything else at a message boundary means the stream has lost its framing,
and the only safe answer is to close that connection.
"""

from __future__ import annotations

import struct

from txturn.wire.stun import (
    CHANNEL_DATA_FIRST_BYTE_MAX,
    CHANNEL_DATA_FIRST_BYTE_MIN,
    StunDecodeError,
    padding,
)

_LENGTH = struct.Struct("!H")


class StreamFramer:
    """
    Buffers stream bytes and returns whole frames.

    The buffer holds at most one incomplete frame, and a frame is at most
    64 KiB plus its header, so a client cannot make it grow further.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add C{data}; return every frame now complete, in order.

        @raise StunDecodeError: if the bytes at a frame boundary are
            neither STUN nor ChannelData.
        """
        self.append(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def append(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """
        The next complete frame, or C{None} until more bytes arrive.  One
        at a time, because after a ConnectionBind the rest of the stream
        is not TURN at all.

        @raise StunDecodeError: as L{feed}.
        """
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        first = buffer[0]
        (length,) = _LENGTH.unpack_from(buffer, 2)
        if first < CHANNEL_DATA_FIRST_BYTE_MIN:
            if length % 4:
                raise StunDecodeError("STUN message length is not a multiple of 4")
            size = 20 + length
        elif first <= CHANNEL_DATA_FIRST_BYTE_MAX:
            size = 4 + length + padding(length)
        else:
            raise StunDecodeError(f"stream byte 0x{first:02x} starts neither STUN nor ChannelData")
        if len(buffer) < size:
            return None
        frame = bytes(buffer[:size])
        del buffer[:size]
        return frame

    def head(self) -> bytearray:
        """
        The buffered bytes, not copied: valid until the next L{append},
        L{consume} or L{next_frame}, and never to be resized by the caller
        (a fast path reads whole frames from it, then L{consume}s them).
        """
        return self._buffer

    def consume(self, size: int) -> None:
        """
        Drop the first C{size} buffered bytes: whole frames taken
        elsewhere.
        """
        del self._buffer[:size]

    def take_remaining(self) -> bytes:
        """
        Everything buffered and not yet framed, emptying the buffer.
        """
        remaining = bytes(self._buffer)
        self._buffer.clear()
        return remaining

    @property
    def buffered(self) -> int:
        return len(self._buffer)
