"""Stages CERT_REQUEST and CERT_PUBLISH: a fresh RSA key and PKCS#10 sent in ``GetAndPublishCert``
(protocol.md §7); the pool signs, publishes to the user's home-pool store, and returns the certificate.

The private key is generated here and never leaves the phone; only the CSR travels. ErrorInfo 3005 is
failure 1 (the store is unavailable) and fails CERT_PUBLISH; 3001 tells the caller to get a new ticket once.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from agent.net import PhoneHttp
from agent.stages import X509_ERRORS, AgentError, Stage, StageError, WireError, one_line
from agent.ticket import Ticket
from agent.truststore import TrustStore
from agent.wire import certprov

SOAP_XML = "text/xml; charset=utf-8"


class TicketRejected(StageError):
    """ErrorInfo 3001: the ticket is no good; discard it and run WEB_TICKET once more."""


def generate_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def build_csr(key: rsa.RSAPrivateKey, sip_uri: str) -> bytes:
    """PKCS#10 with subject CN=<user@domain> (the SIP URI without ``sip:``), SHA-256 signed (§7.1)."""
    cn = sip_uri.removeprefix("sip:")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(Encoding.DER)


def get_and_publish(
    http: PhoneHttp,
    ticket: Ticket,
    csr_der: bytes,
    device_id: str,
    requested_expiry: datetime | None = None,
) -> tuple[bytes, str]:
    """POST GetAndPublishCert; returns (certificate DER, request id) or raises the mapped StageError."""
    request_id = str(uuid.uuid4())
    req = certprov.CertRequest(
        to=ticket.proof_url,
        message_id=f"uuid:{uuid.uuid4()}",
        assertion_xml=ticket.saml.assertion_xml,
        assertion_id=ticket.saml.assertion_id,
        created=ticket.created,
        expires=ticket.expires,
        device_id=device_id,
        entity=ticket.sip_uri.removeprefix("sip:"),
        csr_der=csr_der,
        request_id=request_id,
        requested_expiry=requested_expiry,
    )
    headers = {"Content-Type": SOAP_XML, "SOAPAction": f'"{certprov.GET_AND_PUBLISH_ACTION}"'}
    body = certprov.build_request(req, ticket.proof_key)
    reply = http.request("POST", ticket.proof_url, Stage.CERT_REQUEST, body=body, headers=headers)
    if reply.status != 200:
        raise StageError(Stage.CERT_REQUEST, "HTTP", f"GetAndPublishCert: HTTP {reply.status}")
    try:
        answer = certprov.parse_response(reply.body)
    except WireError as exc:
        raise StageError(Stage.CERT_REQUEST, "BAD_RESPONSE", f"GetAndPublishCert: {exc.detail}") from None
    if isinstance(answer, certprov.CertProvFault):
        raise _fault_error(answer)
    return answer.cert_der, request_id


def _fault_error(fault: certprov.CertProvFault) -> StageError:
    detail = f"{fault.reason} ({fault.code})"
    if fault.code == certprov.CertProvCode.TICKET_INVALID:
        return TicketRejected(Stage.CERT_REQUEST, fault.code, detail)
    if fault.code == certprov.CertProvCode.DATA_STORE_UNAVAILABLE:
        return StageError(Stage.CERT_PUBLISH, fault.code, detail)
    return StageError(Stage.CERT_REQUEST, fault.code, detail)


def check_issued(
    cert_der: bytes,
    key: rsa.RSAPrivateKey,
    sip_uri: str,
    trust: TrustStore,
    ca_chain: tuple[x509.Certificate, ...],
    at: datetime,
) -> x509.Certificate:
    """The returned certificate must carry our public key and SIP URI and chain to the CertProv CA."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        names = _sip_uris(cert)
    except X509_ERRORS as exc:
        raise _bad(f"the returned token is not a usable DER certificate: {one_line(exc)}") from None
    ours = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) != ours:
        raise _bad("the certificate is not for this phone's key")
    if sip_uri.lower() not in (u.lower() for u in names):
        raise _bad(f"the certificate does not name {sip_uri}")
    try:
        trust.verify_client(cert, ca_chain, at)
    except AgentError as exc:
        raise _bad(f"the certificate does not chain to the CertProv CA: {exc.detail}") from None
    return cert


def _sip_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]


def _bad(detail: str) -> StageError:
    return StageError(Stage.CERT_REQUEST, "BadCertificate", detail)


def new_device_id() -> str:
    return "{" + str(uuid.uuid4()).upper() + "}"
