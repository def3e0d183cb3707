"""``phoneprov pool user add|set-pin|unlock|set-password|list`` — the lab's CsClientPin cmdlets.

PINs and passwords are read from stdin (one line), never from the command line where ``ps`` would show them,
checked against the pool's PIN policy, and stored only as a salted PBKDF2-SHA256 hash.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tools.pool import config as pool_config
from tools.pool.pinpolicy import hash_pin
from tools.pool.store import open_store
from tools.pool.users import add_user, set_pin, user_rows

LIST_COLUMNS = ("sip", "line", "name", "pin_locked", "recent_failures", "global_failures", "certificates")


def add_parser(psub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    u = psub.add_parser("user", help="users: add, set-pin, unlock, set-password, list")
    usub = u.add_subparsers(dest="user_command", required=True, parser_class=parser_class)
    for verb, text in (
        ("add", "add a user with a PIN (PIN on stdin)"),
        ("set-pin", "set a user's PIN (PIN on stdin; the pool's PIN policy applies)"),
        ("unlock", "unlock a user's PIN after too many wrong PINs"),
        ("set-password", "set a user's lab credential for Basic sign-in (password on stdin)"),
        ("list", "every user with PIN state and published certificates"),
    ):
        p = usub.add_parser(verb, help=text)
        p.add_argument("--config", type=Path, required=True, help="pool TOML (see tools/pool/config.py)")
        if verb == "list":
            p.add_argument("--json", action="store_true")
            continue
        p.add_argument("--sip", required=True, help="sip:alice@lab.test")
        if verb == "add":
            p.add_argument("--line", required=True, help="tel:+14255550123;ext=123")
            p.add_argument("--name", default="")


def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    stdin, out = stdin or sys.stdin, out or sys.stdout
    cfg = pool_config.load(args.config)
    now = datetime.now(UTC)
    verb = args.user_command
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # users may be added before the first serve
    with open_store(cfg.store, timeout_s=cfg.store_timeout_s) as store:
        if verb == "list":
            _print_rows(user_rows(store, now), args.json, out)
            return 0
        if verb == "unlock":
            store.unlock_pin(args.sip)
            print(f"PIN unlocked for {args.sip}", file=out)
            return 0
        secret = _secret(stdin, "password" if verb == "set-password" else "PIN")
        if verb == "add":
            add_user(store, cfg.pin_policy, args.sip, args.line, secret, now, args.name, cfg.fqdn)
            print(f"added {args.sip}", file=out)
        elif verb == "set-pin":
            set_pin(store, cfg.pin_policy, args.sip, secret, now)
            print(f"PIN set for {args.sip}", file=out)
        else:
            store.set_password(args.sip, hash_pin(secret))
            print(f"password set for {args.sip}", file=out)
    return 0


def _secret(stdin: TextIO, what: str) -> str:
    line = stdin.readline()
    secret = line.strip() if what == "PIN" else line.rstrip("\n")
    if not secret:
        raise ValueError(f"no {what} on stdin (pipe it in: echo … | phoneprov pool user …)")
    return secret


def _print_rows(rows: list[dict[str, Any]], as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps(rows, indent=2), file=out)
        return
    table = [LIST_COLUMNS, *[tuple(_cell(r[c]) for c in LIST_COLUMNS) for r in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(LIST_COLUMNS))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
