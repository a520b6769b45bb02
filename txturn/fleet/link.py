# -*- test-case-name: tests.test_redis -*-
"""
One connection to the Redis a fleet shares (C{--redis URL}), with a
timeout on every call and a notion of whether Redis is reachable.

The client is U{txredisapi<https://github.com/IlyaSkriblovsky/txredisapi>}:
it speaks Redis on Twisted's own reactor, reconnects by itself, and has
publish/subscribe, so the server needs neither a thread pool nor the
asyncio reactor (which would take the fast path's epoll loop away).

When a call fails or times out, the link is I{down}: later calls fail at
once (the server then counts quotas on its own and answers from its key
cache), the degradation is logged once, and a PING every second finds
out when Redis is back.  Then the link is up again and tells whoever
asked (L{RedisLink.on_up}), so state written while Redis was away is
written again.  All timers are on the injected reactor.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall

from txturn.fleet.address import RedisAddress
from txturn.util.log_level import logger

#: Every key and channel txturn uses starts with this.
PREFIX = "txturn:"


class RedisDown(Exception):
    """
    Redis did not answer the last call; this one was not sent.
    """


def connect(reactor: Any, address: RedisAddress, timeout: float) -> Any:
    """
    A txredisapi factory of one connection that reconnects by itself,
    within a second of Redis coming back (txredisapi's default waits up
    to ten).
    """
    factory = txredisapi.RedisFactory(
        str(address),
        address.db or None,
        1,
        isLazy=True,
        password=address.password,
        username=address.username,
        replyTimeout=timeout,
        convertNumbers=False,
    )
    factory.maxDelay = 1.0
    factory.startConnecting(endpoint(reactor, address, timeout))
    return factory


def endpoint(reactor: Any, address: RedisAddress, timeout: float) -> Any:
    """
    Where to connect: TCP, or TLS for C{rediss://}, with the server's
    certificate checked for its host name.
    """
    plain = HostnameEndpoint(reactor, address.host, address.port, timeout)
    if not address.tls:
        return plain
    from twisted.internet import ssl

    trust: Any = None
    if address.ca_file is not None:
        with open(address.ca_file, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
    options = ssl.optionsForClientTLS(address.host, trustRoot=trust)
    return wrapClientTLS(options, plain)


class RedisLink:
    """
    Calls to Redis with a timeout, and whether it is reachable.

    @ivar up: whether the last call (or PING) was answered.
    @ivar on_up: called with no argument each time Redis is back.
    """

    log = logger()

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        timeout: float = 1.0,
        factory: Any = None,
    ) -> None:
        self._reactor = reactor
        self.address = address
        self.timeout = timeout
        self._factory = factory if factory is not None else connect(reactor, address, timeout)
        self.connection = self._factory.handler
        self.up = True
        #: Whether a call was ever answered: until then, no connection
        #: only means it is still being made.
        self._answered = False
        self.on_up: list[Callable[[], object]] = []
        self._probe: IDelayedCall | None = None
        self._closed = False

    def call(self, command: str, *args: Any) -> defer.Deferred[Any]:
        """
        Run a Redis command (C{"HGET"}, C{"PUBLISH"}, ...); fails with
        L{RedisDown} at once while Redis is unreachable.
        """
        return self._guarded(lambda: self.connection.execute_command(command, *args))

    def script(self, source: str, keys: list[str], args: list[Any]) -> defer.Deferred[Any]:
        """
        Run a Lua script: sent once, then named by its SHA-1 (EVALSHA).
        """
        return self._guarded(lambda: self.connection.eval(source, keys, args))

    def _guarded(self, send: Callable[[], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        if self._answered and not self._factory.size:
            # The connection dropped: no need to wait for a timeout.
            self.went_down("connection lost")
        if not self.up or self._closed:
            return defer.fail(RedisDown(str(self.address)))
        d = send()
        d.addTimeout(self.timeout, self._reactor)
        d.addCallbacks(self._succeeded, self._failed)
        return d

    def _succeeded(self, result: Any) -> Any:
        self._answered = True
        return result

    def _failed(self, failure: Any) -> Any:
        error = failure.value
        # A Redis error reply (a bad script, a wrong type) is an answer:
        # Redis is up, the caller gets the error.
        if not isinstance(error, txredisapi.ResponseError):
            self.went_down(
                f"no answer in {self.timeout:g} s"
                if isinstance(error, defer.TimeoutError | defer.CancelledError)
                else str(error) or type(error).__name__
            )
        return failure

    def went_down(self, reason: str) -> None:
        if not self.up or self._closed:
            return
        self.up = False
        self.log.warn(
            "Redis at {address} unreachable ({reason}): quotas are counted per server "
            "and keys come from the cache until it is back",
            address=str(self.address),
            reason=reason,
        )
        self._probe = self._reactor.callLater(1.0, self._ping)

    def _ping(self) -> None:
        self._probe = None
        d: defer.Deferred[Any] = self.connection.execute_command("PING")
        d.addTimeout(self.timeout, self._reactor)
        d.addCallbacks(self._back, self._still_down)

    def _still_down(self, failure: Any) -> None:
        if not self._closed:
            self._probe = self._reactor.callLater(1.0, self._ping)

    def _back(self, _: object) -> None:
        if self._closed:
            return
        self.up = True
        self.log.info("Redis at {address} reachable again", address=str(self.address))
        for callback in list(self.on_up):
            callback()

    def close(self) -> defer.Deferred[Any]:
        """
        Stop probing and disconnect; fires when the connection is closed.
        """
        self._closed = True
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = None
        d: defer.Deferred[Any] = self.connection.disconnect()
        return d


class _Listener(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """
    A subscribing connection: subscribes on every (re)connection, tells
    whoever asked once subscribed, and hands each message to its
    channel's handler.
    """

    def connectionMade(self) -> Any:
        result = super().connectionMade()
        self.whenConnected().addCallback(self._subscribe)
        return result

    def _subscribe(self, _: object) -> Any:
        d = self.subscribe(list(self.factory.handlers))
        d.addCallback(lambda _: self.factory.subscribed())
        return d.addErrback(lambda _: None)

    def messageReceived(self, pattern: object, channel: object, message: object) -> None:
        name = channel.decode() if isinstance(channel, bytes) else str(channel)
        handler = self.factory.handlers.get(name)
        if handler is not None:
            handler(message)


def subscribe(
    reactor: Any,
    link: RedisLink,
    handlers: Mapping[str, Callable[[object], object]],
    subscribed: Callable[[], object] = lambda: None,
) -> txredisapi.SubscriberFactory:
    """
    A connection of its own (a subscribed Redis connection takes no
    other command) to C{link}'s Redis, subscribed to the channels of
    C{handlers} again after every reconnection; C{subscribed} is called
    each time, so what was published meanwhile can be read again.  Its
    C{disconnect()} ends it.
    """
    address = link.address
    factory = txredisapi.SubscriberFactory(isLazy=True)
    factory.protocol = _Listener
    factory.password = address.password
    factory.username = address.username
    factory.handlers = dict(handlers)
    factory.subscribed = subscribed
    factory.maxDelay = 1.0
    factory.startConnecting(endpoint(reactor, address, link.timeout))
    return factory
