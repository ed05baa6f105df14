"""The node's interconnect identity: an EC P-256 TLS key sealed by the HSM's KEK, and its
self-signed certificate.

gRPC's TLS stack cannot use a PKCS#11 key, so the TLS key is the one secret of the federation
that exists outside the token: it is generated here, stored only sealed by the KEK (and resealed
with every KEK rotation, like the Paillier keys), and unsealed into the daemon's memory when
the interconnect starts. The certificate is public; peers pin its fingerprint at enrolment.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from appliance.federation.channel import generate_key, load_private_key, make_node_certificate
from appliance.state.atomicfile import write_atomic
from appliance.trust.errors import TrustError

SECRET = "interconnect-tls"


def load_or_create(root: Any, node_id: str, organisation: str) -> tuple[Any, bytes]:
    """(private key, certificate PEM) of this node, made on first use."""
    cert_path = root.layout.path / "interconnect" / "certificate.pem"
    sealed = root.load_secret(SECRET)
    if sealed is not None and cert_path.is_file():
        key = load_private_key(sealed)
        cert_pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if _public_der(cert.public_key()) != _public_der(key.public_key()):
            raise TrustError(f"{cert_path} does not belong to the sealed interconnect key")
        if not names or names[0].value != node_id:
            raise TrustError(f"{cert_path} names node {names[0].value if names else None!r}, "
                             f"this node is {node_id!r}")
        return key, cert_pem
    key = generate_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    cert_pem = make_node_certificate(key, node_id, organisation=organisation or None)
    # sealed key first, certificate second: a certificate on disk always has its key
    root.store_secret(SECRET, pem)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cert_path, cert_pem, mode=0o644)
    return key, cert_pem


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)
