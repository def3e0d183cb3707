"""Argument types shared by the commands (one-line errors, like everything else on the command line)."""

from __future__ import annotations

from ipaddress import IPv4Address


def name_addr(item: str) -> tuple[str, str]:
    """``NAME=ADDR`` as for curl's --resolve: the lab's names that DNS does not know."""
    name, sep, addr = item.partition("=")
    if not sep or not name or not addr:
        raise ValueError(f"--resolve takes NAME=ADDR, got {item!r}")
    return name.lower(), addr


def port(text: str) -> int:
    """An argparse type: a TCP/UDP port, 1..65535 (argparse turns the ValueError into a usage error)."""
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError(f"port {value} is outside 1..65535")
    return value


def server_address(text: str, option: str, default_port: int) -> tuple[str, int]:
    """``ADDR[:PORT]`` with an IPv4 address; one-line ValueError naming ``option`` otherwise."""
    host, sep, number = text.partition(":")
    try:
        return str(IPv4Address(host)), port(number) if sep else default_port
    except ValueError:
        raise ValueError(
            f"{option} takes ADDR[:PORT] with an IPv4 address and a port 1..65535, got {text!r}"
        ) from None


def usb_id(text: str) -> int:
    """An argparse type: a USB vendor or product id in hex (``1d6b`` or ``0x1d6b``)."""
    value = int(text, 16)
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"USB id {text!r} is outside 0000..ffff")
    return value
