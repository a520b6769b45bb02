"""
Tests for L{txturn.transports.tls}: certificate loading errors, protocol versions,
ciphers and ALPN.
"""

from __future__ import annotations

import os

from OpenSSL import SSL
from twisted.trial.unittest import SynchronousTestCase

from txturn.testing import self_signed_certificate
from txturn.transports.tls import TlsConfigurationError, TlsCredentials


def handshake(server: SSL.Connection, client: SSL.Connection) -> None:
    """
    Pump a handshake between two memory-BIO connections; raises the
    first SSL.Error either side hits.
    """
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(20):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            while True:
                try:
                    data = a.bio_read(65536)
                except SSL.WantReadError:
                    break
                b.bio_write(data)
    client.do_handshake()
    server.do_handshake()


class CredentialTests(SynchronousTestCase):
    """
    Bad files stop startup with a message naming them.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.cert, self.key = self_signed_certificate(self.directory)

    def test_good(self) -> None:
        """
        A matching certificate and key load, and so does a chain file.
        """
        TlsCredentials(self.cert, self.key, chain=self.cert)

    def test_missing_certificate(self) -> None:
        """
        A certificate file that does not exist is named in the error.
        """
        error = self.assertRaises(
            TlsConfigurationError, TlsCredentials, "/nonexistent.pem", self.key
        )
        self.assertEqual(
            str(error), "cannot read certificate /nonexistent.pem: No such file or directory"
        )

    def test_bad_key(self) -> None:
        """
        A key file that holds no key is named in the error.
        """
        error = self.assertRaises(TlsConfigurationError, TlsCredentials, self.cert, self.cert)
        self.assertEqual(str(error), f"no private key in {self.cert}")

    def test_mismatch(self) -> None:
        """
        A key from another certificate is refused.
        """
        other = os.path.join(self.directory, "other")
        os.makedirs(other)
        _, other_key = self_signed_certificate(other)
        error = self.assertRaises(TlsConfigurationError, TlsCredentials, self.cert, other_key)
        self.assertEqual(str(error), f"key {other_key} does not match certificate {self.cert}")

    def test_bad_chain(self) -> None:
        """
        A chain file with no certificate in it is refused.
        """
        error = self.assertRaises(
            TlsConfigurationError, TlsCredentials, self.cert, self.key, self.key
        )
        self.assertEqual(str(error), f"--ca-file {self.key} holds no PEM certificate")


class ProtocolTests(SynchronousTestCase):
    """
    What the contexts agree to.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.credentials = TlsCredentials(*self_signed_certificate(directory))

    def client(self, method: int, max_version: int | None = None) -> SSL.Connection:
        context = SSL.Context(method)
        if max_version is not None:
            context.set_min_proto_version(0)
            context.set_max_proto_version(max_version)
            context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        return SSL.Connection(context, None)

    def test_tls13(self) -> None:
        """
        A modern client gets TLS 1.3.
        """
        server = SSL.Connection(self.credentials.tls_context(), None)
        client = self.client(SSL.TLS_CLIENT_METHOD)
        handshake(server, client)
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.3")

    def test_tls12_aead(self) -> None:
        """
        A TLS 1.2 client gets a forward-secret AEAD suite.
        """
        server = SSL.Connection(self.credentials.tls_context(), None)
        client = self.client(SSL.TLS_CLIENT_METHOD, SSL.TLS1_2_VERSION)
        handshake(server, client)
        self.assertEqual(server.get_protocol_version_name(), "TLSv1.2")
        cipher = server.get_cipher_name()
        assert cipher is not None
        self.assertTrue(cipher.startswith("ECDHE-"), cipher)
        self.assertTrue("GCM" in cipher or "CHACHA20" in cipher, cipher)

    def test_tls11_refused(self) -> None:
        """
        TLS 1.1 is refused.
        """
        server = SSL.Connection(self.credentials.tls_context(), None)
        client = self.client(SSL.TLS_CLIENT_METHOD, SSL.TLS1_1_VERSION)
        self.assertRaises(SSL.Error, handshake, server, client)

    def test_alpn(self) -> None:
        """
        stun.turn is chosen when offered; a client offering only other
        protocols still connects, without ALPN.
        """
        for offered, chosen in [([b"h2", b"stun.turn"], b"stun.turn"), ([b"h2"], b"")]:
            server = SSL.Connection(self.credentials.tls_context(), None)
            client = self.client(SSL.TLS_CLIENT_METHOD)
            client.set_alpn_protos(offered)
            handshake(server, client)
            self.assertEqual(client.get_alpn_proto_negotiated(), chosen)

    def test_dtls12(self) -> None:
        """
        DTLS 1.2 works; DTLS 1.0 is refused.
        """
        server = SSL.Connection(self.credentials.dtls_context(), None)
        handshake(server, self.client(SSL.DTLS_CLIENT_METHOD))
        self.assertEqual(server.get_protocol_version_name(), "DTLSv1.2")
        server = SSL.Connection(self.credentials.dtls_context(), None)
        old = self.client(SSL.DTLS_CLIENT_METHOD, 0xFEFF)
        self.assertRaises(SSL.Error, handshake, server, old)
