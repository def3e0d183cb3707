"""Web Ticket errors (protocol.md §6.5): an HTTP 500 SOAP fault with an OCSDiagnosticsFault detail, mirrored
in the Lync ``X-Ms-diagnostics`` header. Imported through :mod:`agent.wire.webticket`.

The header is the fallback: a proxy or IIS error page may replace the body, but the header usually survives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from lxml import etree

from agent.stages import Stage, WireError
from agent.wire.soap import (
    AF_NS,
    NS,
    XML_WS,
    build_fault,
    find_text,
    parse_envelope,
    parse_fault,
)

_STAGE = Stage.WEB_TICKET
FAULT_KIND = "Client:Auth"


class TicketFaultCode(IntEnum):
    """§6.5 codes; :attr:`reason_name` is the protocol's reason word ("PinInvalid")."""

    PIN_INVALID = 2001
    PIN_LOCKED = 2002
    PHONE_AMBIGUOUS = 2003
    PIN_EXPIRED = 2004
    PIN_AUTH_DISABLED = 2005
    CLAIM_MISMATCH = 2006
    INTERNAL = 2099

    @property
    def reason_name(self) -> str:
        return _REASON_NAMES[self]


_REASON_NAMES = {
    TicketFaultCode.PIN_INVALID: "PinInvalid",
    TicketFaultCode.PIN_LOCKED: "PinLocked",
    TicketFaultCode.PHONE_AMBIGUOUS: "PhoneAmbiguous",
    TicketFaultCode.PIN_EXPIRED: "PinExpired",
    TicketFaultCode.PIN_AUTH_DISABLED: "PinAuthDisabled",
    TicketFaultCode.CLAIM_MISMATCH: "ClaimMismatch",
    TicketFaultCode.INTERNAL: "Internal",
}


@dataclass(frozen=True)
class TicketFault:
    """A refused ticket request. ``code`` stays an int so that codes we do not know still travel."""

    code: int
    reason: str

    @property
    def known(self) -> TicketFaultCode | None:
        try:
            return TicketFaultCode(self.code)
        except ValueError:
            return None


def _header_safe(text: str) -> str:
    """Header parameter text: no quotes (they delimit), no control characters, Latin-1 only."""
    cleaned = "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text).replace('"', "'")
    return cleaned.encode("latin-1", "replace").decode("latin-1")


def build_ticket_fault(code: TicketFaultCode | int, reason: str, source_fqdn: str) -> tuple[bytes, str]:
    """``(HTTP 500 body, X-Ms-diagnostics value)`` for a refused ticket request."""
    number = int(code)
    detail = etree.Element(f"{{{AF_NS}}}OCSDiagnosticsFault", nsmap={"af": AF_NS})
    inner = etree.SubElement(detail, f"{{{AF_NS}}}Ms-Diagnostics-Fault")
    etree.SubElement(inner, f"{{{AF_NS}}}ErrorId").text = str(number)
    etree.SubElement(inner, f"{{{AF_NS}}}Reason").text = reason
    body = build_fault("Client", reason, [detail])
    header = (
        f'{number};source="{_header_safe(source_fqdn)}";reason="{_header_safe(reason)}";fault="{FAULT_KIND}"'
    )
    return body, header


_DIAG_HEAD = re.compile(r"\s*(\d{1,9})\s*(?:;|$)", re.ASCII)
_DIAG_PARAM = re.compile(r';\s*([A-Za-z][A-Za-z0-9-]*)\s*=\s*"([^"]*)"')


def parse_ms_diagnostics(value: str) -> tuple[int, dict[str, str]]:
    """``(ErrorId, {param: value})`` of an ``X-Ms-diagnostics`` header value."""
    m = _DIAG_HEAD.match(value)
    if m is None:
        raise WireError(f"X-Ms-diagnostics does not start with an error id: {value[:60]!r}", _STAGE)
    params = {k.lower(): v for k, v in _DIAG_PARAM.findall(value[m.start(1) :])}
    return int(m.group(1)), params


def _from_body(data: bytes) -> TicketFault:
    _, body = parse_envelope(data, _STAGE)
    fault = parse_fault(body, _STAGE)
    if fault is None:
        raise WireError("ticket error response has no <s:Fault>", _STAGE)
    diag = (
        None
        if fault.detail is None
        else fault.detail.find("af:OCSDiagnosticsFault/af:Ms-Diagnostics-Fault", NS)
    )
    if diag is None:
        raise WireError(
            f"SOAP fault has no af:OCSDiagnosticsFault detail ({fault.faultcode}: {fault.faultstring[:80]})",
            _STAGE,
        )
    error_id = find_text(diag, "af:ErrorId", "af:ErrorId", _STAGE)
    if not (error_id.isascii() and error_id.isdigit() and len(error_id) <= 9):
        raise WireError(f"<af:ErrorId> {error_id[:20]!r} is not a number", _STAGE)
    reason = (diag.findtext("af:Reason", None, NS) or fault.faultstring).strip(XML_WS)
    return TicketFault(code=int(error_id), reason=reason)


def parse_ticket_fault(data: bytes, x_ms_diagnostics: str | None) -> TicketFault:
    """The code and reason of a §6.5 error: from the fault detail, else from the header."""
    try:
        return _from_body(data)
    except WireError:
        if not x_ms_diagnostics:
            raise
    code, params = parse_ms_diagnostics(x_ms_diagnostics)
    return TicketFault(code=code, reason=params.get("reason", ""))
