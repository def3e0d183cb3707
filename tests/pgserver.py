"""A throwaway PostgreSQL cluster for tests, or the server named by ``PHONEPROV_TEST_PG_URL``.

``initdb`` into a temporary directory, ``pg_ctl start`` listening on a unix socket in that directory and on
127.0.0.1 (a free port, never another address); local (socket) connections are trusted, TCP ones need the
superuser's random password, so tests exercise a URL with a password in it. initdb and postgres refuse to
run as root, so when the tests are root they run as the ``postgres`` user (or ``nobody``), who owns the
directory. The cluster is stopped and removed by :meth:`PgServer.stop` (and at interpreter exit, should a
session die before its fixture finalizer runs).

CI needs the Debian package ``postgresql`` (it pulls the versioned server, e.g. ``postgresql-15``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

ENV_URL = "PHONEPROV_TEST_PG_URL"
APT_PACKAGES = ("postgresql",)
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "16MB",
}


class PgUnavailable(Exception):
    """No PostgreSQL to test against; the message is the skip reason."""


class PgServerError(RuntimeError):
    """The server programs exist but failed: a real failure, not a reason to skip."""


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path | None:
    """The directory holding initdb/pg_ctl/postgres: ``pg_config --bindir``, else the newest Debian one."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in _SERVER_BINARIES):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    """Who runs the server: nobody special unless we are root (initdb/postgres refuse root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PgUnavailable("running as root and neither a 'postgres' nor a 'nobody' user exists to run postgres")


@dataclass(frozen=True)
class _Local:
    bindir: Path
    root: Path
    port: int
    password: str
    owner: pwd.struct_passwd | None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def run(self, *args: str, timeout: float = 60) -> None:
        """Run a server program as the owner; output goes to a file, never a pipe (postgres inherits it)."""
        kwargs: dict[str, Any] = {}
        if self.owner is not None:
            kwargs = {"user": self.owner.pw_uid, "group": self.owner.pw_gid, "extra_groups": []}
        with open(self.root / "tool.out", "ab") as out:
            done = subprocess.run(
                [str(self.bindir / args[0]), *args[1:]],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=self.root,
                check=False,
                **kwargs,
            )
        if done.returncode != 0:
            raise PgServerError(f"{args[0]} failed: {self.tail()}")

    def tail(self) -> str:
        lines: list[str] = []
        for name in ("tool.out", "server.log"):
            with contextlib.suppress(OSError):
                lines += (self.root / name).read_text(errors="replace").strip().splitlines()[-5:]
        return " | ".join(lines) or "no output"

    def pg_ctl_start(self) -> None:
        options = " ".join(f"-c {k}={v}" for k, v in _SETTINGS.items())
        options += f" -p {self.port} -k {self.root}"
        self.run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "-o", options, "start"
        )

    def pg_ctl_stop(self, mode: str) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-w", "-t", "30", "-m", mode, "stop")


class PgServer:
    """One PostgreSQL for a test session: start(), url(), create_database(), stopped(), stop()."""

    def __init__(self, bindir: Path | None = None, external_url: str | None = None) -> None:
        self.bindir = bindir
        self.external_url = external_url
        self._local: _Local | None = None
        self._databases: list[str] = []
        self._counter = 0

    @classmethod
    def from_environment(cls) -> PgServer:
        """``$PHONEPROV_TEST_PG_URL`` when set, else a local cluster; PgUnavailable names what is missing."""
        external = os.environ.get(ENV_URL, "").strip()
        if external:
            return cls(external_url=external)
        bindir = find_bindir()
        if bindir is None:
            raise PgUnavailable(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install the Debian package "
                f"{' '.join(APT_PACKAGES)} or set {ENV_URL}=postgresql://user:password@host:port/db"
            )
        return cls(bindir=bindir)

    @property
    def external(self) -> bool:
        return self.external_url is not None

    def start(self) -> PgServer:
        if self.external or self._local is not None:
            return self
        assert self.bindir is not None
        owner = _run_as()
        root = Path(tempfile.mkdtemp(prefix="pgtest-"))
        local = _Local(self.bindir, root, _free_port(), secrets.token_urlsafe(18), owner)
        self._local = local
        atexit.register(self.stop)
        try:
            (root / "pw").write_text(local.password + "\n")
            if owner is not None:
                for path in (root, root / "pw"):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            local.run(
                "initdb",
                "-D",
                str(local.data),
                "-U",
                "postgres",
                f"--pwfile={root / 'pw'}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            )
            local.pg_ctl_start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop and remove the local cluster (idempotent); for an external server, drop our databases."""
        if self.external:
            for name in list(self._databases):
                with contextlib.suppress(psycopg.Error):
                    self.drop_database(name)
            return
        local, self._local = self._local, None
        if local is None:
            return
        with contextlib.suppress(PgServerError, OSError, subprocess.SubprocessError):
            if (local.data / "postmaster.pid").exists():
                local.pg_ctl_stop("immediate")
        shutil.rmtree(local.root, ignore_errors=True)

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """The server is down inside the block (clients are cut off) and back up, same port, after it."""
        if self._local is None:
            what = f"cannot stop the server named by {ENV_URL}" if self.external else "not started"
            raise PgUnavailable(what)
        local = self._local
        local.pg_ctl_stop("fast")
        try:
            yield
        finally:
            local.pg_ctl_start()

    # -- URLs and databases -----------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """A TCP URL with the password, as a pool config would name the store."""
        if self.external_url is not None:
            parts = urlsplit(self.external_url)
            return urlunsplit(parts._replace(path="/" + quote(dbname)))
        local = self._require_local()
        return f"postgresql://postgres:{quote(local.password, safe='')}@127.0.0.1:{local.port}/{dbname}"

    def socket_url(self, dbname: str = "postgres") -> str:
        """A unix-socket URL (trusted, no password) of the local cluster."""
        local = self._require_local()
        return f"postgresql://postgres@:{local.port}/{dbname}?host={quote(str(local.root), safe='')}"

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser autocommit connection (socket for the local cluster)."""
        if self.external_url is not None:
            return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=5)
        local = self._require_local()
        return psycopg.connect(
            host=str(local.root), port=local.port, user="postgres", dbname=dbname, autocommit=True
        )

    def create_database(self, **options: str) -> str:
        """A fresh database from template0 (extra CREATE DATABASE options as keyword=value); its name."""
        self._counter += 1
        name = f"phoneprov_test_{os.getpid()}_{self._counter}"
        extra = sql.SQL(" ").join(
            sql.SQL("{} {}").format(sql.SQL(key.upper()), sql.Literal(value))
            for key, value in options.items()
        )
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 {}").format(sql.Identifier(name), extra)
            )
        self._databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if name in self._databases:
            self._databases.remove(name)

    @contextlib.contextmanager
    def database(self, **options: str) -> Iterator[str]:
        """The URL of a fresh database, dropped afterwards."""
        name = self.create_database(**options)
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)

    def _require_local(self) -> _Local:
        if self._local is None:
            raise PgUnavailable("the PostgreSQL test server is not started")
        return self._local
