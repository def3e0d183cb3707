"""The agent.toml reader's parts: the one-line :class:`ConfigError`, typed section getters, value checks.

Kept apart from :mod:`boot.config` (which says *what* the phone's settings are) so that module stays about
the settings; everything here is about reading TOML values and saying precisely what is wrong with one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import urlsplit

from agent.stages import one_line

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_IFNAME = re.compile(r"[^\s/:]{1,15}")  # Linux IFNAMSIZ - 1, no slash, colon or blank


class ConfigError(ValueError):
    """A mistake in the phone's configuration, as one line: ``FILE: [section] key: what is wrong``."""

    def __init__(self, where: str, problem: str, section: str | None = None, key: str | None = None) -> None:
        self.where, self.section, self.key, self.problem = where, section, key, problem
        place = "".join((f" [{section}]" if section else "", f" {key}" if key else ""))
        super().__init__(
            one_line(f"{where}:{place}: {problem}" if place else f"{where}: {problem}", limit=400)
        )


class Table:
    """One ``[section]``: typed getters that consume keys, so leftovers are unknown keys."""

    def __init__(self, where: str, name: str, data: object, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(where, "must be a table", name)
        self.where, self.name, self.data, self.base = where, name, dict(data), base

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.where, problem, self.name, key)

    def text(
        self,
        key: str,
        default: str | None = None,
        valid: Callable[[str], object] | None = None,
        want: str = "",
    ) -> str | None:
        """A string (None when absent and no default); ``valid`` checks it, ``want`` says what it must be."""
        value = self.data.pop(key, default)
        if value is not None and (not isinstance(value, str) or (valid is not None and not valid(value))):
            raise self.error(key, f"must be {want or 'a string in quotes'}, got {show(value)}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.pop(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {show(value)}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.pop(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.error(key, f"must be a whole number {low}..{high}, got {show(value)}")
        return value

    def number(self, key: str, default: float, low: float, high: float | None = None) -> float:
        value = self.data.pop(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise self.error(key, f"must be a finite number, got {show(value)}")
        if value < low or (high is not None and value > high):
            limit = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
            raise self.error(key, f"must be {limit}, got {value!r}")
        return float(value)

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.pop(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"must be a list of non-empty strings, got {show(value)}")
        return tuple(value)

    def path(self, key: str, default: Path | None = None) -> Path | None:
        value = self.text(key)
        if value is None:
            return default
        if not value or "\0" in value:
            raise self.error(key, "must be a file or directory path")
        return self.base / value

    def paths(self, key: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
        if key not in self.data:
            return default
        return tuple(self.base / p for p in self.strings(key, ()))

    def finish(self) -> None:
        if self.data:
            raise self.error(str(sorted(self.data)[0]), "unknown key")


def parse_address(t: Table, key: str, value: str, default_port: int | None) -> tuple[str, int]:
    """``ADDR[:PORT]`` with an IPv4 address; the port is required when there is no default."""
    host, colon, port = value.partition(":")
    form = "ADDR:PORT" if default_port is None else "ADDR[:PORT]"
    if not ipv4(host) or (colon and not _PORT.fullmatch(port)) or (default_port is None and not colon):
        raise t.error(key, f"must be {form} with an IPv4 address, got {show(value)}")
    number = int(port) if colon else default_port
    if number is None or not 1 <= number <= 65535:
        raise t.error(key, f"port must be 1..65535, got {show(value)}")
    return host, number


def ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def dns_name(value: str) -> bool:
    name = value.rstrip(".")
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(p) for p in name.split("."))


def url_check(schemes: tuple[str, ...]) -> Callable[[str], bool]:
    def valid(value: str) -> bool:
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError for a port that is not a number 0..65535
        except ValueError:
            return False
        return parts.scheme.lower() in schemes and bool(parts.hostname) and value.isprintable()

    return valid


def ifname(value: str) -> bool:
    return bool(_IFNAME.fullmatch(value)) and value not in (".", "..")


def show(value: object) -> str:
    """A value for an error message: short, one line."""
    return one_line(repr(value), limit=60)
