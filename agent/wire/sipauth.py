"""SIP header-value grammar for stage REGISTER: auth headers (TLS-DSK, NTLM, Kerberos of MS-SIPAE),
ms-diagnostics, name-addr, CSeq, Expires, and the quoted-string / parameter scanner they share (RFC 3261
§25.1).

These functions take and return text, so both the agent and the registrar use them on values taken from a
:class:`~agent.wire.sip.SipMessage`. Peer text that breaks the grammar is a WireError at stage REGISTER;
arguments that could never go on the wire are a ValueError (a caller's bug).

Quoting of auth parameters is deterministic and follows protocol.md §8.2 and pidgin-sipe: ``version`` goes
bare (``version=4``), every other parameter is quoted (``cnum="1"``, ``qop="auth"``).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.stages import Stage, WireError

if TYPE_CHECKING:
    from agent.wire.sip import SipMessage

__all__ = [
    "UNQUOTED_AUTH_PARAMS",
    "AuthChallenge",
    "MsDiagnostics",
    "NameAddr",
    "challenges",
    "cseq",
    "expires",
    "find_challenge",
    "format_auth_params",
    "format_ms_diagnostics",
    "format_name_addr",
    "has_control",
    "is_token",
    "is_uri",
    "parse_auth_params",
    "parse_ms_diagnostics",
    "parse_name_addr",
    "quote",
    "scan_params",
    "sip_error",
    "snip",
    "split_list",
]

#: Auth parameters sent as tokens by :func:`format_auth_params` unless ``quoted`` says otherwise.
UNQUOTED_AUTH_PARAMS = frozenset({"version"})

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_BARE_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")  # token, or a host / IPv6 reference
_LOOSE_VALUE_RE = re.compile(r"[^\s;,\"]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")  # controls but HT; lone surrogates
_NOT_URI_RE = re.compile(r"[\x00-\x20\x7f\ud800-\udfff]")
_DIAG_CODE_RE = re.compile(r"[0-9]{1,9}")
_CSEQ_RE = re.compile(r"[0-9]{1,10}")
_WS = " \t"


def sip_error(detail: str) -> WireError:
    """A REGISTER-stage WireError; one place so every SIP complaint names the same stage."""
    return WireError(detail, stage=Stage.REGISTER)


def snip(text: str | bytes, limit: int = 40) -> str:
    """A short, single-line rendering of peer data for an error message."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def is_token(text: str) -> bool:
    return _TOKEN_RE.fullmatch(text) is not None


def has_control(text: str) -> bool:
    """True if ``text`` could not stand in a header value: control characters (HT allowed), surrogates."""
    return _CONTROL_RE.search(text) is not None


def is_uri(text: str) -> bool:
    """A plausible URI for a start line or name-addr: non-empty, no blanks or controls."""
    return bool(text) and _NOT_URI_RE.search(text) is None


# --- quoted strings and parameters ----------------------------------------------------------------------


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, not at commas inside quoted strings or ``<...>``."""
    items, start, quoted, angle, i = [], 0, False, 0, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle += 1
        elif c == ">":
            angle = max(0, angle - 1)
        elif c == "," and not angle:
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    return [item.strip(_WS) for item in items if item.strip(_WS)]


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _unquote(text: str, i: int, what: str) -> tuple[str, int]:
    """The quoted-string starting at ``text[i] == '"'`` unescaped, and the index after it."""
    out, i = [], i + 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise sip_error(f"{what}: unterminated quoted string")


def scan_params(text: str, sep: str, what: str, *, leading: bool) -> dict[str, str]:
    """``name[=value]`` pairs separated by ``sep`` (``;`` for header params, ``,`` for auth params).

    Names are lower-cased (they are case-insensitive); values are unquoted and unescaped, case kept; a
    parameter without ``=`` has the value "". ``leading``: the text starts with a separator (``;tag=1``).
    A repeated name is an error, so a peer cannot smuggle a second ``opaque`` past a first-match reader.
    """
    params: dict[str, str] = {}
    i = _skip_ws(text, 0)
    need_sep = leading
    while i < len(text):
        if need_sep:
            if text[i] != sep:
                raise sip_error(f"{what}: expected {sep!r} at {snip(text[i:])}")
            i = _skip_ws(text, i + 1)
        need_sep = True
        name_match = _TOKEN_RE.match(text, i)
        if name_match is None:
            raise sip_error(f"{what}: expected a parameter name at {snip(text[i:])}")
        name, value = name_match.group().lower(), ""
        i = _skip_ws(text, name_match.end())
        if i < len(text) and text[i] == "=":
            i = _skip_ws(text, i + 1)
            if i < len(text) and text[i] == '"':
                value, i = _unquote(text, i, what)
            elif value_match := _LOOSE_VALUE_RE.match(text, i):
                value, i = value_match.group(), value_match.end()
            else:
                raise sip_error(f"{what}: parameter {name!r} has no value")
            i = _skip_ws(text, i)
        if name in params:
            raise sip_error(f"{what}: parameter {name!r} appears twice")
        if has_control(value):
            raise sip_error(f"{what}: parameter {name!r} has a control character")
        params[name] = value
    return params


def quote(value: str) -> str:
    """``value`` as a quoted-string (RFC 3261 §25.1), escaping ``"`` and ``\\``."""
    if has_control(value):
        raise ValueError(f"SIP parameter value {snip(value)} has a control character")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check_param_name(name: str) -> None:
    if not is_token(name):
        raise ValueError(f"SIP parameter name {snip(name)} is not a token")


# --- name-addr ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameAddr:
    """A From/To/Contact value: optional display name, URI, and the *header* parameters (names lower-case)."""

    display: str | None
    uri: str
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not is_uri(self.uri) or ">" in self.uri:
            raise ValueError(f"name-addr URI {snip(self.uri)} is empty or has blanks or '>'")

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")


def parse_name_addr(value: str) -> NameAddr:
    """``"Alice" <sip:a@b>;tag=1``, ``Alice <sip:a@b>``, ``<sip:a@b>`` or bare ``sip:a@b;tag=1`` (whose
    ``;`` parameters belong to the header, RFC 3261 §20.10)."""
    text = value.strip(_WS)
    what = f"name-addr {snip(text)}"
    display: str | None = None
    lt, semi = text.find("<"), text.find(";")
    if text.startswith('"'):
        display, i = _unquote(text, 0, what)
        rest = text[i:].lstrip(_WS)
    elif lt >= 0 and (semi < 0 or lt < semi) and '"' not in text[:lt]:
        display, rest = text[:lt].strip(_WS) or None, text[lt:]
    else:
        uri, params = (text[:semi], text[semi:]) if semi >= 0 else (text, "")
        if not is_uri(uri) or "<" in uri or ">" in uri:
            raise sip_error(f"{what}: bad URI")
        return NameAddr(None, uri, scan_params(params, ";", what, leading=True))
    gt = rest.find(">")
    if not rest.startswith("<") or gt < 0:
        raise sip_error(f"{what}: expected <URI>")
    uri = rest[1:gt].strip(_WS)
    if not is_uri(uri):
        raise sip_error(f"{what}: bad URI")
    if display is not None and has_control(display):
        raise sip_error(f"{what}: display name has a control character")
    return NameAddr(display, uri, scan_params(rest[gt + 1 :], ";", what, leading=True))


def format_name_addr(addr: NameAddr) -> str:
    """Always ``<uri>`` (never ambiguous about whose parameters follow), display name always quoted,
    parameter values bare when they are tokens or hosts, quoted otherwise, valueless when ""."""
    out = f"<{addr.uri}>" if addr.display is None else f"{quote(addr.display)} <{addr.uri}>"
    for name, value in addr.params.items():
        _check_param_name(name)
        if not value:
            out += f";{name}"
        else:
            out += f";{name}={value if _BARE_VALUE_RE.fullmatch(value) else quote(value)}"
    return out


# --- CSeq and Expires ----------------------------------------------------------------------------------


def cseq(msg: SipMessage) -> tuple[int, str]:
    """``(number, method)`` of the CSeq header (RFC 3261 §20.16: number below 2**31)."""
    value = msg.header("CSeq")
    if value is None:
        raise sip_error("SIP message has no CSeq")
    parts = value.split()
    if len(parts) != 2 or not _CSEQ_RE.fullmatch(parts[0]) or not is_token(parts[1]):
        raise sip_error(f"bad CSeq {snip(value)}")
    number = int(parts[0])
    if number >= 2**31:
        raise sip_error(f"CSeq number {number} is not below 2**31")
    return number, parts[1]


def _delta_seconds(value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise sip_error(f"bad {what} {snip(value)}")
    digits = value.lstrip("0") or "0"
    return 2**32 - 1 if len(digits) > 10 else min(int(digits), 2**32 - 1)


def expires(msg: SipMessage, contact_uri: str | None = None) -> int | None:
    """Granted/requested expiry in seconds: the ``expires`` parameter of the Contact (the one whose URI is
    ``contact_uri`` if given, else the first), which overrides the Expires header (RFC 3261 §10.2.1.1);
    values over the §20.19 maximum 2**32-1 are clamped to it. None when neither says."""
    for value in msg.header_values("Contact"):
        if value == "*":
            continue
        contact = parse_name_addr(value)
        if contact_uri is None or contact.uri == contact_uri:
            if "expires" in contact.params:
                return _delta_seconds(contact.params["expires"], "Contact expires")
            break
    header = msg.header("Expires")
    return None if header is None else _delta_seconds(header, "Expires")


# --- auth headers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthChallenge:
    """A WWW-Authenticate challenge, or the credentials of Authorization / Authentication-Info (same
    grammar): scheme as sent, parameters with lower-case names and unquoted values (case kept)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    def is_scheme(self, scheme: str) -> bool:
        """Schemes compare case-insensitively (``TLS-DSK`` = ``tls-dsk``)."""
        return self.scheme.lower() == scheme.lower()

    def format(self, quoted: Collection[str] | None = None) -> str:
        return format_auth_params(self.scheme, self.params, quoted)


def parse_auth_params(value: str) -> AuthChallenge:
    """``TLS-DSK realm="SIP Communications Service", targetname="pool.lab.test", version=4`` and the like."""
    text = value.strip(_WS)
    scheme = _TOKEN_RE.match(text)
    if scheme is None:
        raise sip_error(f"auth header {snip(text)} does not start with a scheme")
    rest = text[scheme.end() :]
    if rest and rest[0] not in _WS:
        raise sip_error(f"auth header {snip(text)}: scheme not followed by a blank")
    params = scan_params(rest, ",", f"{scheme.group()} auth header", leading=False)
    return AuthChallenge(scheme.group(), params)


def format_auth_params(scheme: str, params: Mapping[str, str], quoted: Collection[str] | None = None) -> str:
    """``scheme name="value", name=value, …`` in ``params`` order.

    ``quoted`` names the parameters to quote (case-insensitive); by default all but
    :data:`UNQUOTED_AUTH_PARAMS`, which gives exactly the protocol.md §8.2 spelling. A bare value must be a
    token.
    """
    if not is_token(scheme):
        raise ValueError(f"auth scheme {snip(scheme)} is not a token")
    wanted = None if quoted is None else {name.lower() for name in quoted}
    parts = []
    for name, value in params.items():
        _check_param_name(name)
        as_quoted = name.lower() not in UNQUOTED_AUTH_PARAMS if wanted is None else name.lower() in wanted
        if as_quoted:
            parts.append(f"{name}={quote(value)}")
        elif is_token(value):
            parts.append(f"{name}={value}")
        else:
            raise ValueError(f"auth parameter {name} value {snip(value)} must be quoted")
    return f"{scheme} {', '.join(parts)}" if parts else scheme


def challenges(msg: SipMessage, header_name: str) -> list[AuthChallenge]:
    """Every ``header_name`` line of ``msg`` parsed; a registrar offering NTLM, Kerberos and TLS-DSK sends
    one line per scheme (RFC 3261 §20.44 allows one challenge per header)."""
    return [parse_auth_params(value) for value in msg.header_values(header_name)]


def find_challenge(msg: SipMessage, header_name: str, scheme: str) -> AuthChallenge | None:
    """The first ``header_name`` of ``msg`` with ``scheme``; the other schemes' lines need not parse."""
    for value in msg.header_values(header_name):
        head = _TOKEN_RE.match(value)
        if head is not None and head.group().lower() == scheme.lower():
            return parse_auth_params(value)
    return None


# --- ms-diagnostics -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MsDiagnostics:
    """``ms-diagnostics: 4101;reason="Certificate unknown";source="pool.lab.test"`` (protocol.md §8.3);
    ``params`` holds the parameters other than ``reason``, names lower-case."""

    code: int
    reason: str
    params: dict[str, str] = field(default_factory=dict)


def parse_ms_diagnostics(value: str) -> MsDiagnostics:
    text = value.strip(_WS)
    semi = text.find(";")
    code, rest = (text[:semi], text[semi:]) if semi >= 0 else (text, "")
    code = code.strip(_WS)
    if not _DIAG_CODE_RE.fullmatch(code):
        raise sip_error(f"ms-diagnostics {snip(text)} does not start with a numeric code")
    params = scan_params(rest, ";", "ms-diagnostics", leading=True)
    reason = params.pop("reason", "")
    return MsDiagnostics(int(code), reason, params)


def format_ms_diagnostics(code: int, reason: str, /, **params: str) -> str:
    """``code;reason="…"`` then each of ``params`` quoted, in the order given."""
    if isinstance(code, bool) or not 0 <= code < 10**9:
        raise ValueError(f"ms-diagnostics code {code} is not a 1..9-digit number")
    if "reason" in (name.lower() for name in params):
        raise ValueError("ms-diagnostics reason is given twice")
    out = f"{code};reason={quote(reason)}"
    for name, value in params.items():
        _check_param_name(name)
        out += f";{name}={quote(value)}"
    return out
