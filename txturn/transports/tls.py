# -*- test-case-name: tests.test_tls -*-
"""
The server's certificate, loaded once and used for TLS (TURN over TLS,
C{turns:}) and DTLS alike.

The contexts are built with pyOpenSSL directly: TLS 1.2 and 1.3 only
(DTLS 1.2), forward-secret AEAD ciphers only, no compression or
renegotiation, and ALPN C{stun.turn} (RFC 7443) chosen when the client
offers it.  A client that offers only other protocols still connects:
ALPN is advisory for TURN.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from txturn.util.privileged import read_file

ALPN = b"stun.turn"
#: OpenSSL's DTLS1_2_VERSION, which pyOpenSSL does not export.
DTLS1_2_VERSION = 0xFEFD
#: TLS 1.2 suites; TLS 1.3 suites are all AEAD and stay at OpenSSL's default.
CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!SHA1"


class TlsConfigurationError(ValueError):
    """
    A certificate, key or chain that cannot be used; the message names the
    file and what is wrong with it.
    """


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    return ALPN if ALPN in offered else SSL.NO_OVERLAPPING_PROTOCOLS


class TlsCredentials:
    """
    Certificate chain and key files, checked at construction.

    @param certificate: PEM file with the server certificate, optionally
        followed by its chain.
    @param key: PEM file with the private key.
    @param chain: optional PEM file of further chain certificates to send
        (C{--ca-file}).
    """

    def __init__(self, certificate: str, key: str, chain: str | None = None) -> None:
        self.certificate = certificate
        self.key = key
        self.chain = chain
        # Build one of each now, so a bad file stops startup here.
        self.tls_context()
        self.dtls_context()

    def _read(self) -> tuple[bytes, bytes]:
        """
        The certificate and key files' PEM, read through
        L{txturn.util.privileged.read_file} (so a root-only key still reloads
        after a privilege drop), saying what is wrong with a file OpenSSL
        would only call "no start line" or nothing at all: missing,
        unreadable, or without the PEM block it must hold.
        """
        found = []
        for path, marker, what in [
            (self.certificate, b"-----BEGIN CERTIFICATE-----", "certificate"),
            (self.key, b"PRIVATE KEY-----", "private key"),
        ]:
            try:
                pem = read_file(path)
            except OSError as e:
                raise TlsConfigurationError(f"cannot read {what} {path}: {e.strerror}") from None
            if marker not in pem:
                raise TlsConfigurationError(f"no {what} in {path}")
            found.append(pem)
        return found[0], found[1]

    def _configure(self, context: SSL.Context, renegotiation: bool = False) -> SSL.Context:
        certificate_pem, key_pem = self._read()
        try:
            certificates = x509.load_pem_x509_certificates(certificate_pem)
            context.use_certificate(crypto.X509.from_cryptography(certificates[0]))
            for extra in certificates[1:]:
                context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        except (ValueError, SSL.Error) as e:
            raise TlsConfigurationError(
                f"cannot load certificate {self.certificate}: {_reason(e)}"
            ) from None
        mismatch = TlsConfigurationError(
            f"key {self.key} does not match certificate {self.certificate}"
        )
        try:
            context.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem))
        except (crypto.Error, SSL.Error) as e:
            if "mismatch" in _reason(e):
                raise mismatch from None
            raise TlsConfigurationError(f"cannot load key {self.key}: {_reason(e)}") from None
        try:
            context.check_privatekey()
        except SSL.Error:
            raise mismatch from None
        if self.chain is not None:
            try:
                pem = read_file(self.chain)
            except OSError as e:
                raise TlsConfigurationError(
                    f"cannot read --ca-file {self.chain}: {e.strerror}"
                ) from None
            try:
                chain = x509.load_pem_x509_certificates(pem)
            except ValueError:
                raise TlsConfigurationError(
                    f"--ca-file {self.chain} holds no PEM certificate"
                ) from None
            for cert in chain:
                context.add_extra_chain_cert(crypto.X509.from_cryptography(cert))
        # Idle connections give their read and write buffers back: some
        # 20 KiB each, which a server holding thousands of them notices.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        options = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
        if not renegotiation:
            options |= SSL.OP_NO_RENEGOTIATION
        context.set_options(options)
        context.set_cipher_list(CIPHERS)
        return context

    def tls_context(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_alpn_select_callback(_select_alpn)
        return self._configure(context)

    def dtls_context(self) -> SSL.Context:
        context = SSL.Context(SSL.DTLS_SERVER_METHOD)
        context.set_min_proto_version(DTLS1_2_VERSION)
        # coturn's DTLS client renegotiates (securely, RFC 5746) early in
        # every session; refusing that would refuse the client.
        return self._configure(context, renegotiation=True)

    def connection_creator(self) -> "ServerConnectionCreator":
        return ServerConnectionCreator(self.tls_context())


@implementer(IOpenSSLServerConnectionCreator)
class ServerConnectionCreator:
    """
    What Twisted's TLS layer asks for a connection per accepted socket.
    """

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


def _reason(error: Exception) -> str:
    """
    The most useful words of an OpenSSL error stack.
    """
    try:
        return str(error.args[0][0][2])
    except (IndexError, TypeError):
        return str(error)
