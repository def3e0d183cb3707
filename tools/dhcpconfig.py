"""`phoneprov dhcp-config`: ready-to-paste DHCP server settings for MS-UC-Client phones, like DHCPUtil.

Pure: every function returns text, nothing is read or written. The option bytes come from the agent's own
codecs (:mod:`agent.wire.dhcpopts`), so what we tell a server to send is exactly what the agent parses.
The dnsmasq and Kea forms are those of ``reference/dhcp-peers.md``, checked on the wire there.

For tools/cli.py: build ``UcDhcpSettings(web_fqdn=..., sip_server=..., web_port=..., certprov_path=...,
ntp=..., url_scheme=..., vendor_class=..., subnet=..., interface=...)`` and print
``render(settings, fmt)`` for ``fmt`` in :data:`FORMATS`; both raise :class:`DhcpConfigError` (a ValueError)
whose message is one line naming the bad value. ``ntp`` and ``subnet`` also accept their text forms.

Sub-option 1 is always ``MS-UC-Client`` (the phone ignores option 43 otherwise); ``vendor_class`` only
changes which option-60 value the server matches.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv4Network, ip_address

from agent.wire.dhcp import with_option
from agent.wire.dhcpopts import (
    CERTPROV_REL_PATH,
    UC_IDENTIFIER,
    UcVendorInfo,
    encode_ip_list,
    encode_option43,
    encode_option120,
)

__all__ = ["DEFAULT_SUBNET", "FORMATS", "DhcpConfigError", "UcDhcpSettings", "kea_config", "render"]

FORMATS = ("dnsmasq", "dnsmasq-hex", "kea", "isc", "windows", "hex")
DEFAULT_SUBNET = IPv4Network("192.0.2.0/24")  # RFC 5737 documentation range: never right for a real site

# (code, Kea/ISC name, Windows name, Windows/DHCPUtil description) of the option-43 sub-options.
_SUBOPTIONS = (
    (1, "uc-identifier", "UCIdentifier", "UC Identifier"),
    (2, "url-scheme", "URLScheme", "URL Scheme"),
    (3, "web-server-fqdn", "WebServerFqdn", "Web Server Fqdn"),
    (4, "web-server-port", "WebServerPort", "Web Server Port"),
    (5, "cert-prov-path", "CertProvRelPath", "Cert Prov Relative Path"),
)
_WIN_CLASS = "MSUCClient"
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
# Option 43 sizes above this risk the 576-byte reply limit: in the lab, dnsmasq 2.90 and dhcpd 4.4 (no
# option 57 from the client) sent 244 bytes of option 43 with 120 and 42 beside it, but dropped 249.
_LONG_43 = 200
# (attribute, name, pattern, rule) of the plain-text settings; each ends up quoted in some server syntax.
_TEXT_RULES = (
    ("url_scheme", "URL scheme", r"[A-Za-z][A-Za-z0-9+.-]{0,254}", "a letter, then letters, digits, +-."),
    ("vendor_class", "vendor class", r"[A-Za-z0-9._:+/-]{1,255}", "1-255 letters, digits or ._:+/-"),
    ("interface", "interface", r"[A-Za-z0-9_.-]{1,15}", "1-15 letters, digits or _.- (or None)"),
)
# Quotes, escapes, separators and comment starters that some server syntax cannot carry in a value.
_PATH_UNSAFE = frozenset("\"'\\`$,;#")


class DhcpConfigError(ValueError):
    """A setting no DHCP server should be given; the message is one line naming the value."""


def _fqdn(what: str, name: object) -> str:
    """``name`` without a trailing dot, after RFC 1035 label checks (letters, digits, inner hyphens)."""
    if not isinstance(name, str) or not name:
        raise DhcpConfigError(f"{what} must be a non-empty DNS name, got {name!r}")
    host = name[:-1] if name.endswith(".") else name
    if len(host) > 253:
        raise DhcpConfigError(f"{what} is {len(host)} characters long; a DNS name has at most 253")
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            raise DhcpConfigError(
                f"{what} {name!r}: label {label!r} must be 1-63 letters, digits or inner hyphens (RFC 1035)"
            )
    try:
        ip_address(host)
    except ValueError:
        return host
    raise DhcpConfigError(f"{what} {name!r} is an IP address; phones need a name that matches a certificate")


def _path(path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise DhcpConfigError(f"CertProv path {path!r} must start with '/'")
    if len(path) > 255:
        raise DhcpConfigError(f"CertProv path is {len(path)} characters; a sub-option holds at most 255")
    for ch in path:
        if not 0x21 <= ord(ch) <= 0x7E:
            raise DhcpConfigError(f"CertProv path {path!r} has {ch!r}, which is not printable ASCII")
        if ch in _PATH_UNSAFE:
            raise DhcpConfigError(f"CertProv path {path!r} has {ch!r}, which server configs cannot quote")
    return path


def _ntp(values: object) -> tuple[IPv4Address, ...]:
    if not isinstance(values, (tuple, list)):
        raise DhcpConfigError(f"NTP servers must be a list of IPv4 addresses, got {values!r}")
    out = []
    for value in values:
        try:
            addr = value if isinstance(value, IPv4Address) else ip_address(str(value))
        except ValueError:
            raise DhcpConfigError(f"NTP server {value!r} is not an IP address") from None
        if not isinstance(addr, IPv4Address):
            raise DhcpConfigError(f"NTP server {value} is not IPv4; option 42 carries IPv4 addresses only")
        out.append(addr)
    return tuple(out)


def _subnet(value: object) -> IPv4Network | None:
    if value is None:
        return None
    try:
        net = value if isinstance(value, IPv4Network) else IPv4Network(str(value))
    except ValueError:
        raise DhcpConfigError(f"subnet {value!r} is not an IPv4 network like 192.0.2.0/24") from None
    if net.prefixlen > 30:
        raise DhcpConfigError(f"subnet {net} leaves no room for an address pool; use /30 or larger")
    return net


@dataclass(frozen=True)
class UcDhcpSettings:
    """What DHCPUtil asks for. Names are stored without a trailing dot; text NTP/subnet values parsed."""

    web_fqdn: str
    sip_server: str
    web_port: int = 443
    certprov_path: str = CERTPROV_REL_PATH
    ntp: tuple[IPv4Address, ...] = ()
    url_scheme: str = "https"
    vendor_class: str = UC_IDENTIFIER
    subnet: IPv4Network | None = None
    interface: str | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise in place once, before anyone sees the object
        put(self, "web_fqdn", _fqdn("web FQDN", self.web_fqdn))
        put(self, "sip_server", _fqdn("SIP server", self.sip_server))
        port = self.web_port
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise DhcpConfigError(f"web port {port!r} is not an integer 1-65535")
        put(self, "certprov_path", _path(self.certprov_path))
        put(self, "ntp", _ntp(self.ntp))
        put(self, "subnet", _subnet(self.subnet))
        for attr, what, pattern, rule in _TEXT_RULES:
            value = getattr(self, attr)
            optional = value is None and attr == "interface"
            if not optional and not (isinstance(value, str) and re.fullmatch(pattern, value)):
                raise DhcpConfigError(f"{what} {value!r} must be {rule}")
        try:  # the agent's encoders have the last word; long values are fine, split per RFC 3396
            encode_option43(self.vendor_info)
            encode_option120([self.sip_server])
        except ValueError as exc:
            raise DhcpConfigError(str(exc)) from None

    @property
    def vendor_info(self) -> UcVendorInfo:
        return UcVendorInfo.for_pool(self.web_fqdn, self.web_port, self.url_scheme, self.certprov_path)

    @property
    def certprov_url(self) -> str:
        return self.vendor_info.certprov_url

    @property
    def option43(self) -> bytes:
        """Sub-options 1..5 in order (what Kea and dnsmasq-with-hex send), possibly over 255 bytes."""
        return encode_option43(self.vendor_info)

    @property
    def option120(self) -> bytes:
        return encode_option120([self.sip_server])

    @property
    def network(self) -> IPv4Network:
        return self.subnet or DEFAULT_SUBNET

    def pool(self) -> tuple[IPv4Address, IPv4Address]:
        """A lease pool: .100-.250 of a /24 as in dhcp-peers.md, the upper half of a smaller subnet."""
        base, size = self.network.network_address, self.network.num_addresses
        if size >= 256:
            return base + 100, base + 250
        return base + size // 2, self.network.broadcast_address - 1

    def suboption_values(self) -> tuple[str, str, str, str, str]:
        i = self.vendor_info
        return (i.uc_identifier, i.url_scheme, i.web_server_fqdn, i.web_server_port, i.certprov_rel_path)


def _header(s: UcDhcpSettings, fmt: str, mark: str) -> list[str]:
    """Comment lines naming the values, so a pasted config says what it was made for."""
    size, parts = len(s.option43), len(with_option((), 43, s.option43))
    fits = "fits in one option" if parts == 1 else f"sent as {parts} option-43 instances (RFC 3396)"
    lines = [
        f"phoneprov dhcp-config --format {fmt}: DHCP settings for MS-UC-Client phones",
        f"Web Services (option 43): {s.url_scheme}://{s.web_fqdn} port {s.web_port} path {s.certprov_path}",
        f"CertProv URL the phone builds: {s.certprov_url}",
        f"Registrar / SIP server (option 120): {s.sip_server}",
        f"NTP servers (option 42): {', '.join(map(str, s.ntp)) or 'none'}",
        f"Phones send vendor class (option 60): {s.vendor_class}",
        f"Option 43 is {size} bytes: {fits}",
    ]
    if size > _LONG_43:
        lines.append(
            "dnsmasq and ISC dhcpd leave a long option 43 out of a reply that would pass 576 bytes unless "
            "the phone sends option 57 (maximum message size)"
        )
    return [f"{mark} {line}" for line in lines]


def _subnet_note(s: UcDhcpSettings) -> str:
    if s.subnet is not None:
        return f"Subnet {s.subnet} as given."
    return f"CHANGE the subnet and pool: {DEFAULT_SUBNET} is a documentation range (RFC 5737), a stand-in."


def _render_dnsmasq(s: UcDhcpSettings, as_hex: bool = False) -> list[str]:
    """dhcp-peers.md's dnsmasq lines; ``as_hex`` gives option 43 as the canonical bytes."""
    if as_hex and len(s.option43) > 255:  # dnsmasq 2.90: "dhcp-option too long"; vendor: lines split
        raise DhcpConfigError(f"option 43 is {len(s.option43)} bytes; dnsmasq hex takes 255: use dnsmasq")
    lo, hi = s.pool()
    lines = ["", f"# {_subnet_note(s)}"]
    if s.interface is not None:
        lines += [f"interface={s.interface}", "bind-interfaces"]
    lines += [
        f"{'' if s.subnet else '# '}dhcp-range={lo},{hi},{s.network.netmask},1h",
        "",
        f"# Tag clients whose option 60 contains {s.vendor_class!r} (dnsmasq matches a substring).",
        f"dhcp-vendorclass=set:msuc,{s.vendor_class}",
        "",
    ]
    if as_hex:
        lines += [
            "# Option 43 as raw bytes, sub-options 1..5 in order (the canonical form), tagged clients only.",
            f"dhcp-option=tag:msuc,43,{s.option43.hex(':')}",
        ]
    else:
        lines += [
            "# Option 43 sub-options for that vendor class. Values are quoted on purpose: unquoted, dnsmasq",
            "# would send 443 as a binary integer. dnsmasq sends the sub-options in reverse order (5..1)",
            "# followed by an END byte (ff); phones accept that. --format dnsmasq-hex sends canonical bytes.",
        ]
        lines += [
            f'dhcp-option=vendor:{s.vendor_class},{code},"{value}"'
            for code, value in enumerate(s.suboption_values(), start=1)
        ]
    lines += [
        "",
        "# Option 120 (encoding 0 + the name in DNS wire format) and option 42, only for tagged clients.",
        f"dhcp-option=tag:msuc,option:sip-server,{s.sip_server}",
    ]
    if s.ntp:
        lines.append(f"dhcp-option=tag:msuc,option:ntp-server,{','.join(map(str, s.ntp))}")
    return lines


def kea_config(s: UcDhcpSettings) -> dict[str, object]:
    """The complete Kea 2.x ``Dhcp4`` document (dhcp-peers.md's), ready for ``kea-dhcp4 -t``."""
    option_def: list[dict[str, object]] = [
        {"space": "ms-uc", "name": name, "code": code, "type": "string"} for code, name, _, _ in _SUBOPTIONS
    ]
    option_def.append(
        {"space": "dhcp4", "name": "sip-server", "code": 120, "type": "record", "record-types": "uint8, fqdn"}
    )
    option_data: list[dict[str, object]] = [{"name": "vendor-encapsulated-options"}]
    option_data += [
        {"space": "ms-uc", "name": name, "data": value}
        for (_, name, _, _), value in zip(_SUBOPTIONS, s.suboption_values(), strict=True)
    ]
    option_data.append({"name": "sip-server", "data": f"0, {s.sip_server}."})
    if s.ntp:
        option_data.append({"name": "ntp-servers", "data": ", ".join(map(str, s.ntp))})
    lo, hi = s.pool()
    subnet: dict[str, object] = {"id": 1, "subnet": str(s.network)}
    if s.interface is not None:
        subnet["interface"] = s.interface
    subnet["pools"] = [{"pool": f"{lo} - {hi}"}]
    if s.subnet is None:
        subnet["comment"] = _subnet_note(s)
    client_class = {
        "name": "ms-uc-client",
        "test": f"option[60].text == '{s.vendor_class}'",
        "option-def": [
            {"name": "vendor-encapsulated-options", "code": 43, "type": "empty", "encapsulate": "ms-uc"}
        ],
        "option-data": option_data,
    }
    return {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [s.interface or "*"], "dhcp-socket-type": "raw"},
            "lease-database": {"type": "memfile", "persist": False},
            "authoritative": True,
            "valid-lifetime": 3600,
            "option-def": option_def,
            "client-classes": [client_class],
            "subnet4": [subnet],
        }
    }


def _render_kea(s: UcDhcpSettings) -> list[str]:
    return [
        "// Kea reads // comments; drop these lines for other JSON tools. Kea sends only the options",
        "// a client asks for in option 55 (phones: 43, 120, 42); class ms-uc-client needs option 60 to be",
        f"// exactly {s.vendor_class!r}. Option 43 goes out canonical (sub-options 1..5 in order).",
        f"// {_subnet_note(s)}",
        json.dumps(kea_config(s), indent=2),
    ]


def _render_isc(s: UcDhcpSettings) -> list[str]:
    lo, hi = s.pool()
    lines = [
        "",
        f"# ISC dhcpd 4.x serves the interfaces on its command line: dhcpd -4 -cf FILE {s.interface or 'IF'}",
        "option space ms-uc;",
        *(f"option ms-uc.{name} code {code} = text;" for code, name, _, _ in _SUBOPTIONS),
        "# Option 120 as raw bytes: encoding 0 then the name in DNS wire format (RFC 3361).",
        "option uc-sip-server code 120 = string;",
        "",
        'class "ms-uc-client" {',
        f'  match if option vendor-class-identifier = "{s.vendor_class}";',
        "  vendor-option-space ms-uc;",
        *(
            f'  option ms-uc.{name} "{value}";'
            for (_, name, _, _), value in zip(_SUBOPTIONS, s.suboption_values(), strict=True)
        ),
        "  # Or give the canonical option-43 bytes: drop vendor-option-space and the 5 lines above, and use",
        f"  # option vendor-encapsulated-options {s.option43.hex(':')};",
        f"  option uc-sip-server {s.option120.hex(':')};",
    ]
    if s.ntp:
        lines.append(f"  option ntp-servers {', '.join(map(str, s.ntp))};")
    return [
        *lines,
        "}",
        "",
        f"# {_subnet_note(s)}",
        f"subnet {s.network.network_address} netmask {s.network.netmask} {{",
        "  authoritative;  # without it dhcpd ignores DHCPINFORM, which is how phones ask",
        f"  range {lo} {hi};",
        "}",
    ]


def _render_windows(s: UcDhcpSettings) -> list[str]:
    def ps_bytes(data: bytes) -> str:
        return ",".join(f"0x{b:02X}" for b in data)

    cls, values = _WIN_CLASS, [v.encode("ascii") for v in s.suboption_values()]
    subs = list(zip(_SUBOPTIONS, values, strict=True))
    ntp = list(map(str, s.ntp))
    return [
        "",
        "# Windows Server 2012+ (DhcpServer module), elevated. Ours: mirrors the netsh script below (its",
        "# class, names, BinaryData type: bytes go out as given, no terminator). Server-wide as DHCPUtil, so",
        "# option 120 reaches every client; add -ScopeId to limit the values to one scope.",
        f'Add-DhcpServerv4Class -Name "{cls}" -Type Vendor -Description "UC Vendor Class Id" '
        f'-Data "{s.vendor_class}"',
        *(
            line
            for (code, _, name, desc), raw in subs
            for line in (
                f'Add-DhcpServerv4OptionDefinition -VendorClass "{cls}" -OptionId {code} -Name "{name}" '
                f'-Type BinaryData -Description "{desc}"',
                f'Set-DhcpServerv4OptionValue -VendorClass "{cls}" -OptionId {code} -Value {ps_bytes(raw)}',
            )
        ),
        'Add-DhcpServerv4OptionDefinition -OptionId 120 -Name "UCSipServer" -Type BinaryData '
        '-Description "Sip Server Fqdn"',
        f"Set-DhcpServerv4OptionValue -OptionId 120 -Value {ps_bytes(s.option120)}",
        *([f"Set-DhcpServerv4OptionValue -OptionId 42 -Value {','.join(ntp)}"] if ntp else []),
        "",
        "# The same with netsh, as DHCPUtil's DHCPConfigScript.bat runs it (Lync Server 2010). Commands,",
        "# order, names, comments and the Binary type are verified against Microsoft's published script;",
        "# the hex values are ours, encoded as DHCPUtil documents them. The option 42 line is ours.",
        "# netsh dhcp server delete optionvalue 120",
        "# netsh dhcp server delete optiondef 120",
        f"# netsh dhcp server delete class {cls}",
        '# netsh dhcp server add optiondef 120 UCSipServer Binary 0 comment="Sip Server Fqdn"',
        f"# netsh dhcp server set optionvalue 120 Binary {s.option120.hex().upper()}",
        f'# netsh dhcp server add class {cls} "UC Vendor Class Id" "{s.vendor_class}" 1',
        *(
            line
            for (code, _, name, desc), raw in subs
            for line in (
                f'# netsh dhcp server add optiondef {code} {name} Binary 0 Vendor={cls} comment="{desc}"',
                f"# netsh dhcp server set optionvalue {code} Binary vendor={cls} {raw.hex().upper()}",
            )
        ),
        *([f"# netsh dhcp server set optionvalue 42 IPADDRESS {' '.join(ntp)}"] if ntp else []),
    ]


def _render_hex(s: UcDhcpSettings) -> list[str]:
    """One ``code: hex`` line per option instance, long values split in 255-byte instances (RFC 3396)."""
    options = with_option(with_option((), 43, s.option43), 120, s.option120)
    if s.ntp:
        options = with_option(options, 42, encode_ip_list(s.ntp))
    return [f"{code}: {value.hex()}" for code, value in options]


_RENDERERS: dict[str, tuple[str, Callable[[UcDhcpSettings], list[str]]]] = {
    "dnsmasq": ("#", _render_dnsmasq),
    "dnsmasq-hex": ("#", partial(_render_dnsmasq, as_hex=True)),
    "kea": ("//", _render_kea),
    "isc": ("#", _render_isc),
    "windows": ("#", _render_windows),
    "hex": ("#", _render_hex),
}


def render(settings: UcDhcpSettings, fmt: str) -> str:
    """The configuration text for ``fmt`` (one of :data:`FORMATS`), a comment header first, newline-ended."""
    if fmt not in _RENDERERS:
        raise DhcpConfigError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    mark, renderer = _RENDERERS[fmt]
    return "\n".join([*_header(settings, fmt, mark), *renderer(settings)]) + "\n"
