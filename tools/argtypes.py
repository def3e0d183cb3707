"""Argument types shared by the commands (one-line errors, like everything else on the command line)."""

from __future__ import annotations


def name_addr(item: str) -> tuple[str, str]:
    """``NAME=ADDR`` as for curl's --resolve: the lab's names that DNS does not know."""
    name, sep, addr = item.partition("=")
    if not sep or not name or not addr:
        raise ValueError(f"--resolve takes NAME=ADDR, got {item!r}")
    return name.lower(), addr
