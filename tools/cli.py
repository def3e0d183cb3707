"""`phoneprov`: the one entry point. Parses arguments, delegates, prints; nothing else.

Every command has --help, exits 0 only on success, and reports bad input as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import certs
from agent.stages import AgentError
from tools import demo, report
from tools.pool import config as pool_config
from tools.pool.errors import PoolError
from tools.pool.store import open_store
from tools.pool.users import add_user


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _build() -> argparse.ArgumentParser:
    p = _Parser(
        prog="phoneprov", description="Test IP phone sign-in (Lync 2010 Phone Edition style) for the lab."
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser(
        "demo",
        help="lab pool on loopback + an emulated phone signing in, every stage shown",
        description="Start a lab pool on loopback and boot an emulated phone through every stage. "
        "With --fault, show a field failure, its diagnosis, the repair and the recovery.",
    )
    d.add_argument(
        "--fault",
        choices=demo.FAULTS,
        help="datastore: store unavailable (3005); chain: no path to a shipped root",
    )
    d.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    d.add_argument("--workdir", type=Path, help="keep pool and phone state here (default: a temp dir)")

    c = sub.add_parser(
        "certs", help="the phone's shipped roots", description="Manage the phone's shipped roots."
    )
    csub = c.add_subparsers(dest="certs_command", required=True, parser_class=_Parser)
    add = csub.add_parser("add-root", help="add a lab root CA (self-signed PEM) to the shipped roots")
    add.add_argument("pem", type=Path)
    add.add_argument("--roots-dir", type=Path, default=certs.ROOTS_DIR)
    lst = csub.add_parser("list", help="list the extra lab roots")
    lst.add_argument("--roots-dir", type=Path, default=certs.ROOTS_DIR)
    lst.add_argument("--json", action="store_true")

    pool = sub.add_parser("pool", help="run a lab pool node", description="Lab pool node operations.")
    psub = pool.add_subparsers(dest="pool_command", required=True, parser_class=_Parser)
    serve = psub.add_parser("serve", help="run a pool node until interrupted")
    serve.add_argument("--config", type=Path, required=True, help="pool TOML (see tools/pool/config.py)")
    user = psub.add_parser("add-user", help="provision a user with a PIN (PIN read from stdin)")
    user.add_argument("--config", type=Path, required=True)
    user.add_argument("--sip", required=True, help="sip:alice@lab.test")
    user.add_argument("--line", required=True, help="tel:+14255550123;ext=123")
    user.add_argument("--name", default="")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "certs":
            return _certs(args)
        return _pool(args)
    except PoolError as exc:
        print(f"phoneprov: error: {exc.detail}", file=sys.stderr)
        return 2
    except (AgentError, certs.RootError, ValueError, OSError) as exc:
        print(f"phoneprov: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _demo(args: argparse.Namespace) -> int:
    emit = (lambda kind, value: None) if args.json else report.text_printer(sys.stdout)
    outcome = demo.run_demo(args.fault, args.workdir, emit)
    if args.json:
        print(json.dumps(report.demo_document(outcome), indent=2))
    return outcome.exit_code


def _certs(args: argparse.Namespace) -> int:
    if args.certs_command == "add-root":
        path = certs.add_root(args.pem, args.roots_dir)
        print(f"added {path}")
        return 0
    rows = certs.list_roots(args.roots_dir)
    if args.json:
        print(json.dumps([{"path": str(p), "subject": s, "not_after": str(n)} for p, s, n in rows], indent=2))
    else:
        for path, subject, not_after in rows:
            print(f"{path.name}  {subject}  until {not_after}")
    return 0


def _pool(args: argparse.Namespace) -> int:
    from tools.pool.node import PoolNode  # the server stack is only needed here

    cfg = pool_config.load(args.config)
    if args.pool_command == "add-user":
        pin = sys.stdin.readline().strip()
        with open_store(cfg.store, timeout_s=cfg.store_timeout_s) as store:
            add_user(store, cfg.pin_policy, args.sip, args.line, pin, datetime.now(UTC), args.name, cfg.fqdn)
        print(f"added {args.sip}")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with PoolNode(cfg) as node:
        p = node.ports
        print(
            f"pool {cfg.fqdn} node {cfg.node}: dhcp {p.dhcp} sntp {p.sntp} http {p.http} https {p.https}; "
            f"CertProv {node.certprov_url}",
            flush=True,
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
