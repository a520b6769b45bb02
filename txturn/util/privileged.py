# -*- test-case-name: tests.test_signals -*-
"""
Files only root may read, after twistd has dropped root.

A server started as root with C{proc-user} (C{--uid}) binds its ports as
root and then runs as that user, but its configuration file and its
private key are usually root's alone (Let's Encrypt's C{privkey.pem} is
0600): every reload, which reads them again, would fail, and so would
rotating a REST secret, adding a static user or renewing a certificate.

So before the drop, twistd turn forks a small helper that stays root,
does nothing but read the files the configuration named at start-up
when asked, and removes the pidfile (in a root-only directory) once the
server has exited.  The server reads every such file through
L{read_file}: directly when it may, else through the helper.  Nothing
else crosses: the helper refuses any other path, caps what it sends, and
ends when the server closes its socket.  Each C{--workers} worker gets a
connection of its own.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import time
from typing import Collection

#: The most the helper sends for one file.
MAX_FILE = 64 << 20
_LENGTH = struct.Struct("!I")

_reader: PrivilegedReader | None = None


def read_file(path: str) -> bytes:
    """
    The bytes of the file at C{path}, read as this process may, else
    (after a privilege drop) by the privileged helper, if there is one.

    @raise OSError: as C{open} would, with the helper's reason where it
        was asked.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except PermissionError:
        if _reader is None:
            raise
        return _reader.read(path)


def read_text(path: str) -> str:
    """
    L{read_file}, as UTF-8 text.
    """
    return read_file(path).decode("utf-8")


def install(reader: PrivilegedReader | None) -> None:
    """
    Make C{reader} the helper L{read_file} asks (C{None}: no helper).
    """
    global _reader
    _reader = reader


def installed() -> PrivilegedReader | None:
    return _reader


class PrivilegedReader:
    """
    The server's end of a connection to the helper.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    @classmethod
    def start(cls, allowed: Collection[str], pidfile: str | None) -> PrivilegedReader:
        """
        Fork the helper (call this as root, before the drop), which may
        read the files at C{allowed} and removes C{pidfile} when the
        server has gone.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the helper's own process)
            try:
                ours.close()
                _helper(theirs, frozenset(os.path.abspath(p) for p in allowed), pidfile)
            finally:
                os._exit(0)
        theirs.close()
        ours.set_inheritable(False)
        return cls(ours)

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, path: str) -> bytes:
        _send(self._sock, b"r" + os.path.abspath(path).encode("utf-8", "surrogateescape"))
        answer = _receive(self._sock)
        if answer is None:
            raise PermissionError(errno.EACCES, "the privileged reader has gone")
        if answer[:1] == b"+":
            return answer[1:]
        number, _, reason = answer[1:].decode("utf-8", "replace").partition(" ")
        raise OSError(int(number), reason)

    def connection(self) -> socket.socket:
        """
        A new connection to the helper, for a worker process.
        """
        _send(self._sock, b"c")
        message, fds, _, _ = socket.recv_fds(self._sock, 16, 1)
        if message != b"+" or len(fds) != 1:
            raise OSError(errno.EIO, "the privileged reader gave no connection")
        return socket.socket(fileno=fds[0])

    def close(self) -> None:
        self._sock.close()


def _send(sock: socket.socket, message: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(message)) + message)


def _receive(sock: socket.socket) -> bytes | None:
    header = _exactly(sock, _LENGTH.size)
    if header is None:
        return None
    (length,) = _LENGTH.unpack(header)
    if length > MAX_FILE + 1:
        return None
    return _exactly(sock, length)


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    parts = []
    while size:
        part = sock.recv(min(size, 1 << 20))
        if not part:
            return None
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _helper(
    first: socket.socket, allowed: frozenset[str], pidfile: str | None
) -> None:  # pragma: no cover (runs in the forked helper; tested through it)
    """
    The helper's whole life: answer until every connection has closed,
    then remove the pidfile of the server that has gone.
    """
    for number in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Nothing of the server's: no listener, log file, database or the
    # terminal or pipes its output goes to (a reader of the server's
    # output would wait for the helper too).
    null = os.open(os.devnull, os.O_RDWR)
    for standard in (0, 1, 2):
        os.dup2(null, standard)
    if null > 2:
        os.close(null)
    os.closerange(3, first.fileno())
    os.closerange(first.fileno() + 1, 1 << 16)
    connections = [first]
    while connections:
        readable, _, _ = select.select(connections, [], [])
        for conn in readable:
            request = _receive(conn)
            if request is None:
                connections.remove(conn)
                conn.close()
            elif request[:1] == b"c":
                mine, yours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                socket.send_fds(conn, [b"+"], [yours.fileno()])
                yours.close()
                connections.append(mine)
            else:
                _send(conn, _answer(request[1:].decode("utf-8", "surrogateescape"), allowed))
    if pidfile:
        _remove_pidfile(pidfile)


def _answer(path: str, allowed: frozenset[str]) -> bytes:  # pragma: no cover
    if path not in allowed:
        return (
            f"-{errno.EACCES} not a file the configuration named at start-up "
            "(restart to read it as root)"
        ).encode()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        return f"-{e.errno} {e.strerror}".encode()
    if len(data) > MAX_FILE:
        return f"-{errno.EFBIG} larger than {MAX_FILE} bytes".encode()
    return b"+" + data


def _remove_pidfile(pidfile: str) -> None:  # pragma: no cover
    """
    Remove C{pidfile} once the process it names has gone (twistd, no
    longer root, could not).
    """
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 10
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            pass
        if _zombie(pid):
            break
        time.sleep(0.05)
    else:
        if pid:
            return
    try:
        os.unlink(pidfile)
    except OSError:
        pass


def _zombie(pid: int) -> bool:  # pragma: no cover
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
