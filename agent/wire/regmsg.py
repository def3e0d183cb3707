"""What both ends of stage REGISTER read out of a SIP message the same way (protocol.md §8.2, §8.4).

The phone (:mod:`agent.wire.regflow`) and the lab registrar (``tools.pool.regcore``) must lay out the same
signed string from the same message, so the extraction of the signed values lives here once: whoever signs
builds the message first, takes :func:`signed_fields` of it, and only then adds the auth header (which is
not covered). Sans-IO, like the rest of ``agent.wire``.

Expiry: §8.4 signs the ``Expires`` header, not a Contact's ``expires`` parameter, so both ends act only on the
header (:func:`signed_expiry`) and refuse a message whose parameter says otherwise: RFC 3261 would let the
unsigned parameter win, which would let anyone on the path lengthen or end a binding.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.stages import Stage, WireError
from agent.wire.sip import SipMessage, cseq, expires, parse_name_addr
from agent.wire.sipauth import AuthChallenge, find_challenge, sip_error, snip
from agent.wire.sipsig import SCHEME, SignedFields

__all__ = [
    "DEFAULT_PORT",
    "REALM",
    "SCHEME",
    "UNSIGNED_EXPIRY",
    "VERSION",
    "SipTarget",
    "add_auth_header",
    "aor_key",
    "credentials",
    "pai_uris",
    "signed_expiry",
    "signed_fields",
    "sip_target",
]

REALM = "SIP Communications Service"
VERSION = "4"
DEFAULT_PORT = 5061
#: WireError code of a Contact ``expires`` parameter that contradicts the signed Expires header.
UNSIGNED_EXPIRY = "UNSIGNED_EXPIRY"


def aor_key(uri: str) -> str:
    """An AOR for comparison: without ``sip:``, lower-case (the store's user key rule)."""
    text = uri.strip()
    if text[:4].lower() == "sip:":
        text = text[4:]
    return text.lower()


def add_auth_header(msg: SipMessage, name: str, value: str) -> SipMessage:
    """``msg`` with ``name: value`` added just before Content-Length (kept last, where readers expect it);
    auth headers are added after signing, since the signature does not cover them."""
    return (
        msg.without_header("Content-Length")
        .with_header(name, value)
        .with_header("Content-Length", str(len(msg.body)))
    )


def credentials(msg: SipMessage, header: str) -> AuthChallenge | None:
    """The TLS-DSK line of ``header`` (WWW-Authenticate, Authorization, Authentication-Info), if any."""
    return find_challenge(msg, header, SCHEME)


def pai_uris(msg: SipMessage) -> tuple[str | None, str | None]:
    """(sip URI, tel URI) of P-Asserted-Identity, each None when absent (§8.4 signs both)."""
    sip_uri: str | None = None
    tel_uri: str | None = None
    for value in msg.header_values("P-Asserted-Identity"):
        uri = parse_name_addr(value).uri
        scheme = uri.partition(":")[0].lower()
        if scheme in ("sip", "sips") and sip_uri is None:
            sip_uri = uri
        elif scheme == "tel" and tel_uri is None:
            tel_uri = uri
    return sip_uri, tel_uri


def signed_fields(
    msg: SipMessage, realm: str, targetname: str, rand: str = "", num: str = ""
) -> SignedFields:
    """The values §8.4 signs for ``msg``; responses add their status code. WireError if a header the
    signature needs (From, To, Call-ID, CSeq) is missing or malformed."""
    from_header, to_header, call_id = msg.header("From"), msg.header("To"), msg.header("Call-ID")
    if from_header is None or to_header is None or call_id is None:
        raise sip_error("SIP message lacks From, To or Call-ID; it cannot be signed or verified")
    sender, recipient = parse_name_addr(from_header), parse_name_addr(to_header)
    number, method = cseq(msg)
    pai_sip, pai_tel = pai_uris(msg)
    return SignedFields(
        realm=realm,
        targetname=targetname,
        call_id=call_id,
        cseq_num=str(number),
        cseq_method=method,
        from_uri=sender.uri,
        from_tag=sender.tag,
        to_uri=recipient.uri,
        to_tag=recipient.tag,
        pai_sip=pai_sip,
        pai_tel=pai_tel,
        expires=msg.header("Expires"),
        status=None if msg.status is None else str(msg.status),
        rand=rand,
        num=num,
    )


def signed_expiry(msg: SipMessage, contact_uri: str) -> int | None:
    """The expiry to act on: the (signed) Expires header, None when absent. WireError with code
    :data:`UNSIGNED_EXPIRY` when ``contact_uri``'s Contact carries an ``expires`` parameter that differs
    (an absent header differs from any parameter); other Contacts' parameters are theirs, not ours."""
    header = expires(msg.without_header("Contact"))
    param = expires(msg.without_header("Expires"), contact_uri)
    if param is not None and param != header:
        signed = "absent" if header is None else str(header)
        raise WireError(
            f"unsigned expiry: Contact expires={param} contradicts the signed Expires ({signed})",
            Stage.REGISTER,
            UNSIGNED_EXPIRY,
        )
    return header


@dataclass(frozen=True)
class SipTarget:
    """Where a SIP URI points: host (IPv6 without brackets) and port (5061 when the URI names none)."""

    host: str
    port: int


def sip_target(uri: str) -> SipTarget:
    """Host and port of ``sip:[user@]host[:port][;params]`` — the 301 Contact of a home-pool redirect."""
    scheme, colon, rest = uri.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise sip_error(f"redirect target {snip(uri)} is not a sip: URI")
    hostport = rest.split(";", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, after = hostport[1:].partition("]")
        port_text = after.removeprefix(":") if bracket and after.startswith(":") else ""
        if not bracket or (after and not after.startswith(":")):
            raise sip_error(f"redirect target {snip(uri)} has a bad IPv6 reference")
    else:
        host, _, port_text = hostport.partition(":")
    if not host or any(c in host for c in ' <>"[]'):
        raise sip_error(f"redirect target {snip(uri)} names no host")
    if not port_text:
        return SipTarget(host.lower(), DEFAULT_PORT)
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise sip_error(f"redirect target {snip(uri)} has a bad port {snip(port_text)}")
    return SipTarget(host.lower(), int(port_text))
