"""X.509 certificates made with ``cryptography``: what a test control plane and a webhook server need.

``issue`` signs one certificate (a CA when ``is_ca``); ``serving_certificate`` makes a throwaway CA and a
server certificate for some hosts, kept in memory, with the CA's PEM for a webhook configuration's
``caBundle``. EC P-256 keys throughout: quick to make, and what Go's TLS stack (kube-apiserver) accepts.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate | None,
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    *,
    is_ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: Iterable[x509.GeneralName] = (),
) -> x509.Certificate:
    """A certificate for ``key`` signed by ``ca_key`` (self-signed when ``ca_cert`` is None), valid from an
    hour ago (clock skew) for a year."""
    now = datetime.datetime.now(datetime.UTC)
    issuer = ca_cert.subject if ca_cert is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans := list(sans):
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def subject_alt_name(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class ServingCertificate:
    """A server certificate and the CA that signed it, as PEM."""

    ca: bytes
    cert: bytes
    key: bytes

    def server_context(self) -> ssl.SSLContext:
        """A TLS server context presenting the certificate. (``ssl`` loads a key pair from files only, so
        they are written to a private temporary directory for the moment it takes.)"""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="simcluster-tls-") as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(self.cert)
            key.touch(mode=0o600)
            key.write_bytes(self.key)
            context.load_cert_chain(cert, key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A TLS client context that trusts the CA only."""
        return ssl.create_default_context(cadata=self.ca.decode())


def serving_certificate(hosts: Iterable[str], *, common_name: str = "simcluster") -> ServingCertificate:
    """A fresh CA and a server certificate for ``hosts`` (IP addresses or DNS names) signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_cert = issue(ca_key, None, ca_key, ca_name, is_ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue(
        ca_key,
        ca_cert,
        key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[subject_alt_name(h) for h in dict.fromkeys(hosts)],
    )
    return ServingCertificate(pem_cert(ca_cert), pem_cert(cert), pem_key(key))
