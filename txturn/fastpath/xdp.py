# -*- test-case-name: tests.test_xdp -*-
"""
The kernel data path (C{--xdp IFACE,...}): an XDP program
(C{xdp_relay.bpf.c}, built by clang when the package is built) relays
the ChannelData of established UDP channels before the socket layer,
from entries this module writes into its maps.

The core stays the source of truth.  L{XdpForwarding} wraps the
user-space fast path (L{txturn.fastpath.forwarding.Forwarding}): every
call the core makes goes to it unchanged, and the calls that bind a
channel or take one away also write or remove the channel's two XDP
entries (client to peer, peer to client), at the same moments the
user-space entries change.  A datagram the program has no entry for, or
cannot relay as it is, goes up to the sockets unchanged, so the
user-space paths see exactly what they would without XDP, less what the
program relayed.  The program's per-entry counters are added to the
allocation's, so metrics and usage records count every packet once.

Loading uses libbpf (Debian's C{libbpf1}) through ctypes, as the
well-kept loader of BPF objects, rather than a BPF assembler or ELF
loader written here; its calls are made at start, at a channel bind or
removal, and when counters are taken, never per packet.  The program is
attached through BPF links, which the kernel removes when the process
that holds them ends, a crash (SIGKILL) included, so nothing is left on
the interfaces and nothing is pinned.

What stays in user space: Send and Data indications, TCP, TLS and DTLS
clients, allocations with C{--max-bps}, a client and relay of different
families, listeners on a wildcard address (the entry needs the address
the client sent to), scoped IPv6 addresses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.resources
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Iterable

from twisted.application.service import Service
from zope.interface import implementer

from txturn.core.forwarding import Counters, IForwarding
from txturn.core.interfaces import Address
from txturn.util.counting import Counted, family
from txturn.util.log_level import logger

#: The program's file in the package, built from C{xdp_relay.bpf.c}.
OBJECT = "xdp_relay.bpf.o"

#: XDP_FLAGS_* of linux/if_link.h.
_SKB_MODE, _DRV_MODE = 1 << 1, 1 << 2
#: BPF_XDP of enum bpf_attach_type.
_BPF_XDP = 37

#: The maps, by the names the program gives them.
MAPS = ("channel_entries", "peer_entries", "egress", "egress_ok", "stats")

#: The program's counters (enum of xdp_relay.bpf.c), by metric label.
STATS = ("to_peers", "to_clients", "no_route", "too_big")

_XDP = family(
    "xdp_datagrams",
    "Datagrams of established channels the kernel data path (--xdp) relayed, or "
    "matched and left to user space (no route through an --xdp interface, or over "
    "the route's MTU), by outcome.",
    "outcome",
)


class XdpCounter(Counted):
    TO_PEERS = (_XDP, "to_peers")
    TO_CLIENTS = (_XDP, "to_clients")
    NO_ROUTE = (_XDP, "no_route")
    TOO_BIG = (_XDP, "too_big")


class XdpUnavailable(Exception):
    """
    The program cannot run here; the message says why, in one line.
    """


class _LinkCreateOptions(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class ChannelKey(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint8 * 16),
        ("server", ctypes.c_uint8 * 16),
        ("client_port", ctypes.c_uint16),
        ("server_port", ctypes.c_uint16),
        ("channel", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class ChannelValue(ctypes.Structure):
    _fields_ = [
        ("relay", ctypes.c_uint8 * 16),
        ("peer", ctypes.c_uint8 * 16),
        ("relay_port", ctypes.c_uint16),
        ("peer_port", ctypes.c_uint16),
        ("owner", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


class PeerKey(ctypes.Structure):
    _fields_ = [
        ("peer", ctypes.c_uint8 * 16),
        ("relay", ctypes.c_uint8 * 16),
        ("peer_port", ctypes.c_uint16),
        ("relay_port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class PeerValue(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint8 * 16),
        ("server", ctypes.c_uint8 * 16),
        ("client_port", ctypes.c_uint16),
        ("server_port", ctypes.c_uint16),
        ("channel", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("owner", ctypes.c_uint32),
        ("pad2", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
    ]


def _libbpf() -> Any:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise XdpUnavailable("libbpf is not installed (Debian: apt install libbpf1)") from None
    p, i, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64
    for function, result, arguments in [
        ("bpf_object__open_file", p, [ctypes.c_char_p, p]),
        ("bpf_object__load", i, [p]),
        ("bpf_object__close", None, [p]),
        ("bpf_object__find_program_by_name", p, [p, ctypes.c_char_p]),
        ("bpf_object__find_map_fd_by_name", i, [p, ctypes.c_char_p]),
        ("bpf_program__fd", i, [p]),
        ("bpf_link_create", i, [i, i, i, p]),
        ("bpf_map_update_elem", i, [i, p, p, u64]),
        ("bpf_map_delete_elem", i, [i, p]),
        ("bpf_map_lookup_elem", i, [i, p, p]),
        ("bpf_map_get_next_key", i, [i, p, p]),
        ("libbpf_num_possible_cpus", i, []),
        ("libbpf_set_print", p, [p]),
    ]:
        f = getattr(lib, function)
        f.restype, f.argtypes = result, arguments
    # libbpf prints its loader's diagnostics on stderr; a failed load is
    # reported in one line here instead.
    lib.libbpf_set_print(None)
    return lib


def _error(what: str) -> str:
    number = ctypes.get_errno()
    return f"{what}: {os.strerror(number)}" if number else what


def object_path() -> str | None:
    """
    The program's object file as installed, if the package was built
    with it.
    """
    path = importlib.resources.files("txturn.fastpath") / OBJECT
    return str(path) if path.is_file() else None


class XdpMaps:
    """
    The program's maps, by descriptor: what writes entries, in the
    process that loaded the program or in a worker given the descriptors.
    """

    def __init__(self, fds: dict[str, int], lib: Any = None) -> None:
        self.lib = lib if lib is not None else _libbpf()
        self.fds = fds
        self._cpus = max(1, int(self.lib.libbpf_num_possible_cpus()))

    def update(self, name: str, key: Any, value: Any) -> bool:
        result = self.lib.bpf_map_update_elem(
            self.fds[name], ctypes.byref(key), ctypes.byref(value), 0
        )
        return bool(result == 0)

    def take(self, name: str, key: Any, value: Any) -> bool:
        """
        Read the entry into C{value} and delete it; whether it was there.
        """
        fd = self.fds[name]
        found = self.lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) == 0
        self.lib.bpf_map_delete_elem(fd, ctypes.byref(key))
        return bool(found)

    def read(self, name: str, key: Any, value: Any) -> bool:
        fd = self.fds[name]
        return bool(self.lib.bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value)) == 0)

    def remove_owned(self, owner: int) -> int:
        """
        Delete every entry C{owner} (a worker's index) wrote: a worker
        that died left its allocations, and the entries must not outlive
        them.  How many went.
        """
        removed = 0
        for name, key_type, value_type in (
            ("channel_entries", ChannelKey, ChannelValue),
            ("peer_entries", PeerKey, PeerValue),
        ):
            fd = self.fds[name]
            keys: list[Any] = []
            key, following = key_type(), key_type()
            previous: Any = None
            while self.lib.bpf_map_get_next_key(fd, previous, ctypes.byref(following)) == 0:
                key = key_type.from_buffer_copy(following)
                keys.append(key)
                previous = ctypes.byref(key)
            for key in keys:
                value = value_type()
                if self.read(name, key, value) and value.owner == owner:
                    self.lib.bpf_map_delete_elem(fd, ctypes.byref(key))
                    removed += 1
        return removed

    def stats(self) -> dict[str, int]:
        """
        The program's counters, summed over the CPUs.
        """
        totals = {}
        values = (ctypes.c_uint64 * self._cpus)()
        for index, name in enumerate(STATS):
            key = ctypes.c_uint32(index)
            self.lib.bpf_map_lookup_elem(self.fds["stats"], ctypes.byref(key), values)
            totals[name] = sum(values)
        return totals


@dataclass
class Attachment:
    interface: str
    mode: str  # "native" or "generic"


class XdpProgram:
    """
    The program loaded and attached to C{interfaces}: native XDP where
    the driver has it, generic otherwise.  L{close} detaches it (as the
    end of the process does).

    @raise XdpUnavailable: with why, in one line.
    """

    log = logger("txturn.fastpath")

    def __init__(self, interfaces: Iterable[str], path: str | None = None) -> None:
        path = path if path is not None else object_path()
        if path is None:
            raise XdpUnavailable(
                "the XDP program was not built with the package (it needs clang and "
                "libbpf-dev when it is installed)"
            )
        lib = _libbpf()
        self.attachments: list[Attachment] = []
        self._links: list[int] = []
        ctypes.set_errno(0)
        self._object = lib.bpf_object__open_file(path.encode(), None)
        if not self._object:
            raise XdpUnavailable(_error(f"cannot open {path}"))
        self.lib = lib
        try:
            ctypes.set_errno(0)
            if lib.bpf_object__load(self._object) != 0:
                raise XdpUnavailable(
                    _error(
                        "the kernel refused the XDP program "
                        "(it needs CAP_BPF and CAP_NET_ADMIN, or root)"
                    )
                )
            program = lib.bpf_object__find_program_by_name(self._object, b"txturn_relay")
            self.program_fd = int(lib.bpf_program__fd(program))
            fds = {
                name: int(lib.bpf_object__find_map_fd_by_name(self._object, name.encode()))
                for name in MAPS
            }
            self.maps = XdpMaps(fds, lib)
            for interface in interfaces:
                self._attach(interface)
        except BaseException:
            self.close()
            raise

    def _attach(self, interface: str) -> None:
        try:
            index = socket.if_nametoindex(interface)
        except OSError:
            raise XdpUnavailable(f"no interface {interface}") from None
        attached = self._link(index, "native", _DRV_MODE) or self._link(index, "generic", _SKB_MODE)
        if attached is None:
            raise XdpUnavailable(_error(f"cannot attach the XDP program to {interface}"))
        self._links.append(attached[0])
        self.attachments.append(Attachment(interface, attached[1]))
        key, value = ctypes.c_uint32(index), ctypes.c_uint32(index)
        for name in ("egress", "egress_ok"):
            self.maps.update(name, key, value)

    def _link(self, index: int, mode: str, flags: int) -> tuple[int, str] | None:
        """
        A BPF link of the program to interface C{index} in C{mode}, or
        C{None} when the kernel or driver refuses.
        """
        options = _LinkCreateOptions(ctypes.sizeof(_LinkCreateOptions), flags, 0)
        ctypes.set_errno(0)
        link = self.lib.bpf_link_create(self.program_fd, index, _BPF_XDP, ctypes.byref(options))
        return (int(link), mode) if link >= 0 else None

    def describe(self) -> str:
        return ", ".join(f"{a.mode} on {a.interface}" for a in self.attachments)

    def not_forwarding(self) -> list[str]:
        """
        The sysctls still off that the program's route lookup needs on
        (the kernel answers it only for interfaces that forward): while
        one is off, the datagrams that come in there go to user space.
        """
        off = []
        for attachment in self.attachments:
            for version in ("ipv4", "ipv6"):
                name = f"net.{version}.conf.{attachment.interface}.forwarding"
                path = f"/proc/sys/net/{version}/conf/{attachment.interface}/forwarding"
                try:
                    with open(path) as f:
                        if f.read().strip() == "0":
                            off.append(name)
                except OSError:
                    pass
        return off

    def close(self) -> None:
        """
        Detach from every interface and free the program and its maps.
        """
        for link in self._links:
            os.close(link)
        self._links = []
        if self._object:
            self.lib.bpf_object__close(self._object)
            self._object = None


class XdpService(Service):
    """
    Holds the program while the server runs, and detaches it when it
    stops (the kernel does so too if the process dies first).
    """

    def __init__(self, program: XdpProgram) -> None:
        self.program = program

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.program.close()


def _packed(host: str) -> tuple[int, bytes]:
    address = ipaddress.ip_address(host)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return family, address.packed.ljust(16, b"\0")


def _port(port: int) -> int:
    # The maps hold ports in network order, read as a native u16.
    return socket.htons(port)


@dataclass
class _Slot:
    """
    One allocation's client, as XDP entries name it, and its entries.
    """

    family: int
    client: bytes
    client_port: int
    server: bytes
    server_port: int
    #: channel number -> (channel key, peer key, peer host)
    channels: dict[int, tuple[ChannelKey, PeerKey, str]] = field(default_factory=dict)
    #: Counters of entries removed, not yet taken.
    pending: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    #: What each entry had counted when last taken: key bytes -> (packets, bytes).
    taken: dict[bytes, tuple[int, int]] = field(default_factory=dict)


@implementer(IForwarding)
class XdpForwarding:
    """
    The user-space fast path C{inner}, and the XDP entries of every UDP
    channel it is told of, written into C{maps}.

    @param owner: written into every entry: the worker's index, so the
        supervisor can remove a dead worker's entries
        (L{XdpMaps.remove_owned}).
    """

    log = logger("txturn.fastpath")

    def __init__(self, inner: IForwarding, maps: XdpMaps, owner: int = 0) -> None:
        self.inner = inner
        self.maps = maps
        self.owner = owner
        self._slots: dict[int, _Slot] = {}
        #: Entries refused by a full map (logged once).
        self._full = False

    @property
    def user_space(self) -> IForwarding:
        """
        The compiled path beneath, which pumps the sockets
        (L{txturn.fastpath.forwarding.user_space}).
        """
        return self.inner

    # -- slots -----------------------------------------------------------------

    def open(self, client: Any, client_address: Address, txid_prefix: bytes) -> int | None:
        slot = self.inner.open(client, client_address, txid_prefix)
        if slot is None or getattr(client, "transport_name", None) != "udp":
            return slot
        local = getattr(client, "local_address", None)
        if not local or "%" in client_address[0] or "%" in local[0]:
            return slot
        family, packed = _packed(client_address[0])
        server_family, server = _packed(local[0])
        if family != server_family or not any(server):
            return slot  # a wildcard listener: the address the client sent to is unknown
        self._slots[slot] = _Slot(family, packed, _port(client_address[1]), server, _port(local[1]))
        return slot

    def close(self, slot: int) -> Counters:
        inner = self.inner.close(slot)
        state = self._slots.pop(slot, None)
        if state is None:
            return inner
        for channel in list(state.channels):
            self._remove(state, channel)
        return _sum(inner, self._take(state))

    def take_counters(self, slot: int) -> Counters:
        inner = self.inner.take_counters(slot)
        state = self._slots.get(slot)
        if state is None:
            return inner
        return _sum(inner, self._take(state))

    # -- channels --------------------------------------------------------------

    def channel_bound(self, slot: int, channel: int, relay: Any, peer: Address) -> None:
        self.inner.channel_bound(slot, channel, relay, peer)
        state = self._slots.get(slot)
        address = getattr(relay, "address", None)
        if state is None or address is None or "%" in peer[0]:
            return
        if getattr(relay, "forwarding_handle", None) is None:
            return  # not a UDP relay the user-space path pumps
        family, relay_host = _packed(address[0])
        peer_family, peer_host = _packed(peer[0])
        if not (family == peer_family == state.family) or not any(relay_host):
            return
        peer_key = self._peer_key(family, peer_host, peer[1], relay_host, address[1])
        if channel in state.channels:
            if bytes(state.channels[channel][1]) == bytes(peer_key):
                return  # a refresh: the entries stand
            self._remove(state, channel)
        channel_key = ChannelKey()
        channel_key.client[:] = state.client
        channel_key.server[:] = state.server
        channel_key.client_port = state.client_port
        channel_key.server_port = state.server_port
        channel_key.channel = socket.htons(channel)
        channel_key.family = family
        channel_value = ChannelValue()
        channel_value.relay[:] = relay_host
        channel_value.peer[:] = peer_host
        channel_value.relay_port = _port(address[1])
        channel_value.peer_port = _port(peer[1])
        channel_value.owner = self.owner
        peer_value = PeerValue()
        peer_value.client[:] = state.client
        peer_value.server[:] = state.server
        peer_value.client_port = state.client_port
        peer_value.server_port = state.server_port
        peer_value.channel = socket.htons(channel)
        peer_value.owner = self.owner
        if not self.maps.update("channel_entries", channel_key, channel_value):
            self._refused()
            return
        if not self.maps.update("peer_entries", peer_key, peer_value):
            self.maps.take("channel_entries", channel_key, ChannelValue())
            self._refused()
            return
        state.channels[channel] = (channel_key, peer_key, peer[0])

    @staticmethod
    def _peer_key(
        family: int, peer: bytes, peer_port: int, relay: bytes, relay_port: int
    ) -> PeerKey:
        key = PeerKey()
        key.peer[:] = peer
        key.relay[:] = relay
        key.peer_port = _port(peer_port)
        key.relay_port = _port(relay_port)
        key.family = family
        return key

    def _refused(self) -> None:
        if not self._full:
            self._full = True
            self.log.warn("XDP entries full: further channels are relayed in user space")

    def _remove(self, state: _Slot, channel: int) -> None:
        """
        Remove a channel's two entries, keeping what they counted since
        last taken for the next take.
        """
        channel_key, peer_key, _ = state.channels.pop(channel)
        channel_value, peer_value = ChannelValue(), PeerValue()
        if self.maps.take("channel_entries", channel_key, channel_value):
            self._count(state, bytes(channel_key), channel_value, 0)
        if self.maps.take("peer_entries", peer_key, peer_value):
            self._count(state, bytes(peer_key), peer_value, 2)
        state.taken.pop(bytes(channel_key), None)
        state.taken.pop(bytes(peer_key), None)

    def _count(self, state: _Slot, name: bytes, value: Any, at: int) -> None:
        packets, size = state.taken.get(name, (0, 0))
        state.pending[at] += value.packets - packets
        state.pending[at + 1] += value.bytes - size
        state.taken[name] = (value.packets, value.bytes)

    def _take(self, state: _Slot) -> Counters:
        for channel_key, peer_key, _ in state.channels.values():
            channel_value, peer_value = ChannelValue(), PeerValue()
            if self.maps.read("channel_entries", channel_key, channel_value):
                self._count(state, bytes(channel_key), channel_value, 0)
            if self.maps.read("peer_entries", peer_key, peer_value):
                self._count(state, bytes(peer_key), peer_value, 2)
        pending = state.pending
        state.pending = [0, 0, 0, 0]
        return (pending[0], pending[1], pending[2], pending[3])

    def channel_expired(self, slot: int, channel: int, relay: Any, peer: Address) -> None:
        self.inner.channel_expired(slot, channel, relay, peer)
        state = self._slots.get(slot)
        if state is not None and channel in state.channels:
            self._remove(state, channel)

    def permission_expired(self, slot: int, host: str) -> None:
        self.inner.permission_expired(slot, host)
        state = self._slots.get(slot)
        if state is None:
            return
        for channel, (_, _, peer) in list(state.channels.items()):
            if peer == host:
                self._remove(state, channel)

    def relay_closed(self, slot: int, relay: Any) -> None:
        self.inner.relay_closed(slot, relay)
        state = self._slots.get(slot)
        address = getattr(relay, "address", None)
        if state is None or address is None:
            return
        family, relay_host = _packed(address[0])
        for channel, (_, peer_key, _) in list(state.channels.items()):
            if bytes(peer_key.relay) == relay_host and peer_key.relay_port == _port(address[1]):
                self._remove(state, channel)

    # -- what stays in user space -----------------------------------------------

    def peer_seen(
        self,
        slot: int,
        relay: Any,
        peer: Address,
        client: Any,
        client_address: Address,
        channel: int,
    ) -> None:
        self.inner.peer_seen(slot, relay, peer, client, client_address, channel)

    def send_seen(self, slot: int, relay: Any, peer: Address) -> None:
        self.inner.send_seen(slot, relay, peer)

    def policy_changed(self) -> None:
        # As the user-space path: Send entries go (their peers are
        # checked per Send); channels were checked when bound, and the
        # Python path keeps relaying them.
        self.inner.policy_changed()

    # -- for tests and metrics ----------------------------------------------------

    def counters(self) -> dict[Counted, int]:
        """
        The program's counters, for C{/metrics}.  Under C{--workers} every
        worker reads the one program's: worker 0 alone reports them.
        """
        if self.owner:
            return {}
        stats = self.maps.stats()
        return {counter: stats[counter.label or ""] for counter in XdpCounter}

    def entries(self) -> int:
        return sum(len(state.channels) for state in self._slots.values())


def _sum(a: Counters, b: Counters) -> Counters:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])
