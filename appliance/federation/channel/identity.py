"""Node identity for the channel's TLS: certificates, fingerprints, the identity proof.

The node key is owned by the caller (sealed by the HSM's KEK, or an HSM key where the TLS stack
could use one); this module only takes a ``cryptography`` private key or its PEM bytes and never
writes it anywhere.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .errors import Unauthorized

# A node id becomes a DNS label in the SAN, so it must be one (RFC 1123, lower case so that the
# SAN compares equal whatever case a peer typed).
_NODE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
SAN_SUFFIX = ".pec"

PrivateKeyLike = ec.EllipticCurvePrivateKey | bytes


def san_for(node_id: str) -> str:
    """The DNS name a node's certificate carries, and the name a client checks it against."""
    check_node_id(node_id)
    return node_id + SAN_SUFFIX


def check_node_id(node_id: str) -> str:
    if not isinstance(node_id, str) or not _NODE_ID.match(node_id):
        raise ValueError(
            f"node id {node_id!r} is not a DNS label (a-z, 0-9 and '-', 1 to 63 characters)"
        )
    return node_id


def load_private_key(key: PrivateKeyLike) -> ec.EllipticCurvePrivateKey:
    """Accept a key object or unencrypted PEM bytes (the caller has already unsealed it)."""
    if isinstance(key, bytes):
        key = serialization.load_pem_private_key(key, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ValueError("the node key must be an EC P-256 private key")
    return key


def private_key_pem(key: PrivateKeyLike) -> bytes:
    """PEM (PKCS#8, unencrypted) as gRPC's credentials want it; kept in memory only."""
    return load_private_key(key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key (tests and the benchmark; a node's real key comes from its HSM)."""
    return ec.generate_private_key(ec.SECP256R1())


def make_node_certificate(
    key: PrivateKeyLike,
    node_id: str,
    *,
    organisation: str | None = None,
    days: int = 3650,
) -> bytes:
    """A self-signed certificate (PEM) for ``key`` with CN = node id and SAN = ``<node_id>.pec``.

    Self-signed because trust comes from pinning (the enrolment verifies the card and its
    attestation), never from a CA; CA:TRUE so that the certificate can itself serve as the one
    trust root a peer pins.
    """
    check_node_id(node_id)
    pkey = load_private_key(key)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, node_id)]
    if organisation:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    name = x509.Name(attrs)
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(pkey.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        # a little slack for clocks of two organisations that disagree
        .not_valid_before(now - datetime.timedelta(minutes=10))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(san_for(node_id))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(pkey, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert_pem: bytes | x509.Certificate) -> str:
    """SHA-256 over the certificate's DER, hex: the value pinned and compared on every call."""
    cert = cert_pem if isinstance(cert_pem, x509.Certificate) else _load(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class CertInfo:
    node_id: str
    san: str
    fingerprint: str
    pem: bytes


def inspect_certificate(cert_pem: bytes) -> CertInfo:
    """Node id (CN), SAN and fingerprint of a node certificate; refuses one not shaped so."""
    cert = _load(cert_pem)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise ValueError("a node certificate has exactly one CN (the node id)")
    node_id = str(cns[0].value)
    check_node_id(node_id)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise ValueError(f"certificate of {node_id} has no SAN") from None
    want = san_for(node_id)
    if want not in sans.value.get_values_for_type(x509.DNSName):
        raise ValueError(f"certificate of {node_id} lacks the SAN {want}")
    if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
        raise ValueError(f"certificate of {node_id} is not for an EC key")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return CertInfo(node_id=node_id, san=want, fingerprint=fingerprint(cert), pem=pem)


def _load(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise ValueError(f"not a PEM certificate: {e}") from None


# -- identity proof --------------------------------------------------------------------------
# gRPC's Python client does not expose the server certificate of a call, so after the TLS
# handshake (which already pinned the peer certificate as the only root) the client asks the
# server to sign a fresh nonce together with both fingerprints. That proves the endpoint holds
# the pinned key *now*, and names which client it believes it is talking to.

_PROOF_CONTEXT = b"pec-federation-channel-hello-v1\x00"


def _proof_message(nonce: bytes, server_fp: str, client_fp: str) -> bytes:
    return _PROOF_CONTEXT + nonce + bytes.fromhex(server_fp) + bytes.fromhex(client_fp)


def sign_proof(key: PrivateKeyLike, nonce: bytes, server_fp: str, client_fp: str) -> bytes:
    pkey = load_private_key(key)
    return pkey.sign(_proof_message(nonce, server_fp, client_fp), ec.ECDSA(hashes.SHA256()))


def verify_proof(
    cert_pem: bytes, nonce: bytes, server_fp: str, client_fp: str, signature: bytes
) -> None:
    from cryptography.exceptions import InvalidSignature

    pub = _load(cert_pem).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    try:
        message = _proof_message(nonce, server_fp, client_fp)
        pub.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise Unauthorized(
            "the server's identity proof does not verify against the pinned certificate"
        ) from None
