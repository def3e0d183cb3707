"""Reaching PostgreSQL: the store URL, a small bounded connection pool, and one-line failure reasons.

psycopg_pool is not a dependency, and the pool node needs little of it: a bounded set of connections shared
by request threads (cheroot workers, the registrar), a health check on checkout (a server restart leaves
idle connections dead, and the next request must not be the one that finds out), and broken connections
thrown away, so the store recovers by itself when the server returns.

The password of the URL appears in no message, repr or log: everything names :attr:`PgTarget.display`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from tools.pool.errors import ConfigError, StoreUnavailable

Conn = psycopg.Connection[TupleRow]

SCHEMES = ("postgresql", "postgres")
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PASSTHROUGH = ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name")
_PARAMS = ("timeout", "pool_size", "host", *_PASSTHROUGH)
DEFAULT_POOL_SIZE = 8


def is_pg_url(url: str) -> bool:
    return url.strip().partition("://")[0].lower() in SCHEMES


@dataclass(frozen=True)
class PgTarget:
    """Where the store lives: ``postgresql://user:password@host:port/dbname?timeout=S&pool_size=N``.

    ``host`` may be a unix-socket directory (``?host=/run/postgresql`` or percent-encoded in the URL);
    sslmode/sslrootcert/sslcert/sslkey/application_name pass through to libpq.
    """

    dbname: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float | None = None
    pool_size: int = DEFAULT_POOL_SIZE
    libpq: tuple[tuple[str, str], ...] = ()

    @property
    def display(self) -> str:
        """``user@host:port/dbname``: how messages name the store (never with the password)."""
        who = f"{self.user}@" if self.user else ""
        where = self.host or "localhost"
        if ":" in where and not where.startswith("/"):
            where = f"[{where}]"
        port = f":{self.port}" if self.port is not None else ""
        return f"{who}{where}{port}/{self.dbname}"

    def connect_kwargs(self, timeout_s: float) -> dict[str, str | int]:
        """libpq parameters; server-side timeouts make a locked store fail in ``timeout_s``, not hang."""
        ms = max(1, math.ceil(timeout_s * 1000))
        settings = {
            "TimeZone": "UTC",
            "lock_timeout": ms,
            "statement_timeout": 2 * ms,
            # A node frozen mid-transaction must not hold a user's rows for ever.
            "idle_in_transaction_session_timeout": max(10_000, 5 * ms),
        }
        kwargs: dict[str, str | int] = {
            "dbname": self.dbname,
            "connect_timeout": max(2, math.ceil(timeout_s)),  # libpq's minimum is 2 s
            "options": " ".join(f"-c {k}={v}" for k, v in settings.items()),
            "application_name": "phoneprov",
        }
        for key, value in (("host", self.host), ("port", self.port), ("user", self.user)):
            if value is not None:
                kwargs[key] = value
        if self.password is not None:
            kwargs["password"] = self.password
        kwargs.update(self.libpq)
        return kwargs

    def connector(self, timeout_s: float) -> Callable[[], Conn]:
        """Opens one autocommit connection (the caller runs its own BEGIN/COMMIT)."""
        conninfo = make_conninfo("", **self.connect_kwargs(timeout_s))
        return lambda: psycopg.connect(conninfo, autocommit=True)


def _fail(detail: str) -> ConfigError:
    return ConfigError(f"postgresql store URL: {detail}")


def _split_netloc(netloc: str) -> tuple[str | None, str | None, str | None, int | None]:
    """(user, password, host, port) of ``user:password@host:port``, each percent-decoded."""
    userinfo, at, hostport = netloc.rpartition("@")
    user = password = None
    if at:
        name, colon, secret = userinfo.partition(":")
        user = unquote(name) or None
        password = unquote(secret) if colon and secret else None
    if "," in hostport:
        raise _fail("several hosts are not supported; name one host")
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _fail("bad [IPv6] host")
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.partition(":")
    port = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            raise _fail("the port is not a number 1..65535")
        port = int(port_text)
    return user, password, unquote(host) or None, port


def _number(params: dict[str, list[str]], name: str, low: float, high: float) -> float | None:
    if name not in params:
        return None
    text = params[name][-1]
    try:
        value = float(text)
    except ValueError:
        raise _fail(f"{name} {text!r} is not a number") from None
    if not low < value <= high:
        raise _fail(f"{name} {value:g} must be in ({low:g}, {high:g}]")
    return value


def pg_target(url: str) -> PgTarget:
    """Parse a ``postgresql://`` (or ``postgres://``) store URL; ConfigError in one line, no password."""
    text = url.strip()
    if not is_pg_url(text):
        raise _fail("scheme must be postgresql:// or postgres://")
    try:
        parts = urlsplit(text)
    except ValueError:
        raise _fail("cannot be parsed (check the brackets of an IPv6 host)") from None
    if "@" in parts.path + parts.query + parts.fragment:
        # A password with a raw / ? or # splits early: say so without echoing any piece of it.
        raise _fail("'@' after the host: percent-encode / ? # @ in the user or password (%2F %3F %23 %40)")
    if parts.fragment:
        raise _fail("a '#' fragment is not allowed (percent-encode '#' in a password as %23)")
    user, password, host, port = _split_netloc(parts.netloc)
    dbname = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not dbname or "/" in dbname:
        raise _fail("needs one database name: postgresql://user@host:port/dbname")
    params = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(params) - set(_PARAMS))
    if unknown:
        raise _fail(f"unknown parameter(s) {', '.join(unknown)}; supported: {', '.join(_PARAMS)}")
    if "host" in params:
        if host is not None:
            raise _fail("host given twice (in the URL and as ?host=)")
        host = params["host"][-1] or None
    if params.get("sslmode", ["prefer"])[-1] not in _SSLMODES:
        raise _fail(f"sslmode must be one of {', '.join(_SSLMODES)}")
    size = _number(params, "pool_size", 0, 100)
    if size is not None and size != int(size):
        raise _fail(f"pool_size {size:g} must be a whole number")
    return PgTarget(
        dbname=dbname,
        host=host,
        port=port,
        user=user,
        password=password,
        timeout_s=_number(params, "timeout", 0, 300),
        pool_size=DEFAULT_POOL_SIZE if size is None else int(size),
        libpq=tuple((key, params[key][-1]) for key in _PASSTHROUGH if key in params),
    )


def reason(error: BaseException, target: PgTarget) -> str:
    """The first line of a driver error, with the password blotted out should libpq ever echo it."""
    lines = str(error).strip().splitlines()
    text = lines[0].strip() if lines else type(error).__name__
    if target.password:
        text = text.replace(target.password, "***")
    return text


def usable(conn: Conn) -> bool:
    """Still connected and outside any transaction: fit to go back to the pool."""
    return not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE


class ConnectionPool:
    """At most ``size`` connections, handed to one thread at a time; checked on checkout.

    ``connect`` is called outside the pool's lock, so a slow or refused connection never stalls threads
    returning or taking other connections.
    """

    def __init__(self, connect: Callable[[], Conn], size: int, wait_s: float, name: str) -> None:
        self._connect = connect
        self.size = size
        self.wait_s = wait_s
        self.name = name
        self._idle: list[Conn] = []
        self._open = 0  # idle + checked out + being opened
        self._closed = False
        self._cond = threading.Condition()

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        conn = self._checkout()
        try:
            yield conn
        finally:
            self._checkin(conn)

    def _checkout(self) -> Conn:
        deadline = time.monotonic() + self.wait_s
        while True:
            conn = self._take(deadline)
            if conn is None:
                return self._new()
            try:
                conn.execute("")  # one round trip: a connection the server dropped fails here, not later
                return conn
            except psycopg.Error:
                self._discard(conn)

    def _take(self, deadline: float) -> Conn | None:
        """An idle connection, or None after reserving a slot for a new one; waits while all are busy."""
        with self._cond:
            while True:
                if self._closed:
                    raise StoreUnavailable(f"postgresql {self.name}: store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self.size:
                    self._open += 1
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"postgresql {self.name}: all {self.size} connections busy for {self.wait_s:g} s"
                    )
                self._cond.wait(left)

    def _new(self) -> Conn:
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _checkin(self, conn: Conn) -> None:
        if not usable(conn):
            self._discard(conn)
            return
        with self._cond:
            if not self._closed:
                self._idle.append(conn)
                self._cond.notify()
                return
        self._discard(conn)

    def _discard(self, conn: Conn) -> None:
        with suppress(psycopg.Error, OSError):
            conn.close()
        with self._cond:
            self._open -= 1
            self._cond.notify()

    @property
    def idle(self) -> int:
        with self._cond:
            return len(self._idle)

    def close(self) -> None:
        """Close idle connections now; busy ones close when their thread hands them back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._cond.notify_all()
        for conn in idle:
            self._discard(conn)
