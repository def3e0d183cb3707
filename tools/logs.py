"""``phoneprov logs collect``: the provisioning logs of every node of the pool, merged into one timeline.

Nobody knows which node a phone reached, so the engineer asks them all: every ``[[nodes]]`` entry of the pool
file is fetched at once over HTTPS from its admin endpoint (``GET /admin/logs/provisioning``, bearer token),
each node's certificate checked against the pool's lab root and the pool ``fqdn`` (what every node presents).
The lines are merged by time and each is marked with the node that served it. A node that does not answer is
one line on stderr naming it — and exit status 1 — but the other nodes' lines are still shown.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import ssl
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode, urlsplit

from agent.stages import one_line
from tools.pool import config as pool_config
from tools.pool.admin import LOGS_PATH, MAX_RESPONSE_BYTES, LogQuery, read_token
from tools.pool.config import NodeRef
from tools.pool.errors import ConfigError, PoolError
from tools.pool.provlog import ProvLine, ProvLogError, iso_utc, parse_line

MAX_FETCH_BYTES = MAX_RESPONSE_BYTES + 1024 * 1024
_RELATIVE = re.compile(r"^(\d{1,9})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COLUMNS = ("time", "source", "stage", "result", "code", "ms", "user", "device", "request")


class NodeUnreachable(PoolError):
    """One node's log could not be fetched; the detail names the node and why, in one line."""

    def __init__(self, node: NodeRef, why: str) -> None:
        super().__init__("NODE", f"node {node.name} ({node.admin_url}): {why}")
        self.node = node


@dataclass(frozen=True)
class NodeLog:
    node: NodeRef
    lines: list[ProvLine]
    omitted: int
    unreadable: int


@dataclass(frozen=True)
class Timeline:
    """Every fetched line with the name of the node it came from, in time order; and what went wrong."""

    entries: list[tuple[str, ProvLine]]
    logs: list[NodeLog]
    failures: list[NodeUnreachable]


def add_parser(sub: Any) -> None:
    logs = sub.add_parser(
        "logs", help="the pool's provisioning logs", description="Provisioning logs of the pool's nodes."
    )
    lsub = logs.add_subparsers(dest="logs_command", required=True, parser_class=type(logs))
    c = lsub.add_parser(
        "collect",
        help="fetch every node's provisioning log and merge them into one timeline",
        description="Fetch the provisioning log of every [[nodes]] entry of the pool file over HTTPS (admin "
        "token), merge by time, mark the node that served each request. Exit 1 if a node did not answer "
        "(its name is on stderr; the other nodes' lines are still shown).",
    )
    c.add_argument("--pool", type=Path, required=True, help="pool TOML with the [[nodes]] list")
    c.add_argument("--user", help="only this user: sip:alice@lab.test (case-insensitive, sip: optional)")
    c.add_argument("--since", help="ISO 8601 time (UTC unless it has an offset) or 30s, 15m, 2h, 1d ago")
    c.add_argument("--ca", type=Path, help="the pool's root CA, PEM (default: state_dir/ca/root.pem)")
    c.add_argument("--token-file", type=Path, help="admin token (default: the pool file's [admin])")
    c.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each node")
    c.add_argument("--json", action="store_true", help="one JSON document")


def run(
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    cfg = pool_config.load(args.pool)
    if not cfg.nodes:
        raise ConfigError(f"{args.pool}: no [[nodes]] to collect from (name, admin_url)")
    if args.timeout <= 0:
        raise ValueError("--timeout must be positive")
    query = LogQuery(None if args.since is None else parse_since(args.since, now()), args.user)
    token = read_token(args.token_file or cfg.admin_token_file)
    context = tls_context(args.ca or cfg.ca_root_file)
    timeline = collect(cfg.nodes, query, token, context, cfg.fqdn, args.timeout)
    for failure in timeline.failures:
        print(f"phoneprov: {failure.detail}", file=err)
    for got in timeline.logs:
        if got.omitted:
            print(
                f"phoneprov: node {got.node.name}: {got.omitted} older lines not sent (size cap); "
                "narrow with --since",
                file=err,
            )
    if args.json:
        json.dump(timeline_document(timeline), out, indent=2)
        out.write("\n")
    else:
        write_text(timeline, out)
    return 1 if timeline.failures else 0


def parse_since(text: str, now: datetime) -> datetime:
    """``15m``/``2h``/``30s``/``1d`` before ``now``, or an ISO 8601 time (UTC when it has no offset)."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    try:
        if relative:
            return now - timedelta(seconds=int(relative[1]) * _UNIT_S[relative[2]])
        at = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise ValueError(f"--since {text[:40]!r}: give an ISO 8601 time or 30s, 15m, 2h, 1d") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """Verify the nodes against the pool's lab root only: never the system roots, never unverified."""
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except FileNotFoundError:
        raise ConfigError(f"pool root CA {ca_file} does not exist (give --ca)") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"pool root CA {ca_file}: {one_line(exc)}") from None


def collect(
    nodes: Sequence[NodeRef],
    query: LogQuery,
    token: str,
    context: ssl.SSLContext,
    server_name: str,
    timeout_s: float,
) -> Timeline:
    """Fetch all nodes concurrently and merge; equal times keep the pool file's node order."""

    def one(node: NodeRef) -> NodeLog | NodeUnreachable:
        try:
            return fetch(node, query, token, context, server_name, timeout_s)
        except NodeUnreachable as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(32, len(nodes))) as pool:
        results = list(pool.map(one, nodes))
    logs = [r for r in results if isinstance(r, NodeLog)]
    order = {node.name: i for i, node in enumerate(nodes)}
    entries = [(got.node.name, line) for got in logs for line in got.lines if query.matches(line)]
    entries.sort(key=lambda e: (e[1].time, order[e[0]]))
    return Timeline(entries, logs, [r for r in results if isinstance(r, NodeUnreachable)])


class _PoolConnection(http.client.HTTPSConnection):
    """Connect to the URL's host (a name or an address) but check the certificate for the pool's name."""

    def __init__(self, node: NodeRef, server_name: str, context: ssl.SSLContext, timeout_s: float) -> None:
        url = urlsplit(node.admin_url)
        super().__init__(url.hostname or "", url.port or 443, timeout=timeout_s, context=context)
        self._tls, self._server_name = context, server_name

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self._server_name)


def fetch(
    node: NodeRef,
    query: LogQuery,
    token: str,
    context: ssl.SSLContext,
    server_name: str,
    timeout_s: float,
) -> NodeLog:
    """One node's matching lines, or NodeUnreachable saying in one line what went wrong."""
    params = {"since": None if query.since is None else iso_utc(query.since), "user": query.user}
    target = LOGS_PATH + "?" + urlencode({k: v for k, v in params.items() if v is not None})
    conn = _PoolConnection(node, server_name, context, timeout_s)
    try:
        conn.request("GET", target, headers={"Authorization": f"Bearer {token}"})
        reply = conn.getresponse()
        body = reply.read(MAX_FETCH_BYTES + 1)
        omitted = reply.getheader("X-Phoneprov-Omitted", "0")
    except ssl.SSLCertVerificationError as exc:
        raise NodeUnreachable(
            node, f"TLS: certificate verify failed: {exc.verify_message} (is --ca the pool's root?)"
        ) from None
    except TimeoutError:
        raise NodeUnreachable(node, f"no answer within {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise NodeUnreachable(node, f"cannot fetch: {one_line(exc)}") from None
    finally:
        conn.close()
    if reply.status != 200:
        first = one_line(body.decode("utf-8", "replace").partition("\n")[0], 120)
        hint = " (every node needs the same admin token)" if reply.status == 401 else ""
        raise NodeUnreachable(node, f"HTTP {reply.status}: {first}{hint}")
    if len(body) > MAX_FETCH_BYTES:
        raise NodeUnreachable(node, f"answer larger than {MAX_FETCH_BYTES} bytes")
    lines, unreadable = [], 0
    for raw in body.splitlines():
        try:
            lines.append(parse_line(raw))
        except ProvLogError:
            unreadable += 1
    return NodeLog(node, lines, int(omitted) if omitted.isdigit() else 0, unreadable)


# -- output ---------------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """Log fields come from phones: escape anything a terminal would act on (controls, bidi overrides)."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _row(source: str, line: ProvLine) -> tuple[str, ...]:
    ms = "" if line.duration_ms is None else str(line.duration_ms)
    cells = (iso_utc(line.time), source, line.stage, line.result, line.code, ms)
    return tuple(_printable(c) for c in (*cells, line.user, line.device, line.request, line.detail))


def write_text(timeline: Timeline, out: TextIO) -> None:
    """Aligned columns, one request per line, the detail last."""
    if not timeline.entries:
        print("no matching provisioning-log lines", file=out)
        return
    rows = [_row(source, line) for source, line in timeline.entries]
    header = (*(c.upper() for c in COLUMNS), "DETAIL")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(COLUMNS))]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]), file=out)


def timeline_document(timeline: Timeline) -> dict[str, Any]:
    """``{"lines": [{"source", "time", "node", …}], "nodes": [{"name", "admin_url", "ok", …}]}``."""
    nodes: list[dict[str, Any]] = [
        {
            "name": g.node.name,
            "admin_url": g.node.admin_url,
            "ok": True,
            "lines": len(g.lines),
            "omitted": g.omitted,
            "unreadable": g.unreadable,
            "error": None,
        }
        for g in timeline.logs
    ]
    nodes += [
        {
            "name": f.node.name,
            "admin_url": f.node.admin_url,
            "ok": False,
            "lines": 0,
            "omitted": 0,
            "unreadable": 0,
            "error": f.detail,
        }
        for f in timeline.failures
    ]
    return {
        "lines": [{"source": source, **line.as_dict()} for source, line in timeline.entries],
        "nodes": nodes,
    }
