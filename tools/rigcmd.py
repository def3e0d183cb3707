"""The command line of ``phoneprov rig`` (relays) and ``phoneprov tether`` (USB provisioning)."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

import certs
from hal.tether.host import LAB_MANUFACTURER, LAB_PID, LAB_VID
from tools.argtypes import name_addr, port, server_address, usb_id


def add_parsers(sub: Any, parser_class: type[argparse.ArgumentParser]) -> None:
    rg = sub.add_parser(
        "rig",
        help="the phones on their relays: status, on, off, cycle, emulate a board",
        description="Power-cycle lab phones through their relay boards (the field's remedy).",
    )
    rsub = rg.add_subparsers(dest="rig_command", required=True, parser_class=parser_class)
    for verb, text in (
        ("status", "power state of every phone (or the ones named)"),
        ("on", "power a phone on"),
        ("off", "power a phone off"),
        ("cycle", "off, wait, on; then wait for SIGNED_IN"),
    ):
        r = rsub.add_parser(verb, help=text)
        r.add_argument("phone", nargs="*" if verb == "status" else None)
        r.add_argument("--rig", type=Path, default=Path("/etc/phoneprov/rig.toml"))
        r.add_argument("--json", action="store_true")
        if verb == "cycle":
            r.add_argument(
                "--wait", type=float, default=120.0, help="seconds to wait for SIGNED_IN (0: don't)"
            )
    em = rsub.add_parser("emulate", help="run a byte-exact emulated board on a pty and print its tty")
    em.add_argument("board", help="lcus-4, kmtronic-8, numato-8, devantech-8, …")
    sv = rsub.add_parser(
        "serve",
        help="HTTP: phones POST /phones/<name>/cycle to be power-cycled (agent.toml rig_power_cycle_url)",
    )
    sv.add_argument("--rig", type=Path, default=Path("/etc/phoneprov/rig.toml"))
    sv.add_argument("--listen", default="127.0.0.1:8080", help="ADDR:PORT (the lab address, for phones)")
    sv.add_argument(
        "--cooldown", type=float, default=120.0, help="at most one cycle per phone this often (s)"
    )

    te = sub.add_parser(
        "tether",
        help="USB-tethered provisioning (the key never leaves the phone)",
        description="Provision a phone over its USB (CDC-ACM) link: the phone makes the key and CSR, "
        "the PC gets and publishes the certificate with the user's credential and sends it back.",
    )
    tsub = te.add_subparsers(dest="tether_command", required=True, parser_class=parser_class)
    tp = tsub.add_parser("provision", help="PC side: provision the attached phone")
    tp.add_argument("--port", help="serial port or pyserial URL (default: the phoneprov phone found on USB)")
    tp.add_argument("--serial", help="the phone's USB serial number, when several are attached")
    tp.add_argument(
        "--vid", type=usb_id, default=LAB_VID, help="the gadget's USB vendor id (hex, default 1d6b)"
    )
    tp.add_argument(
        "--pid", type=usb_id, default=LAB_PID, help="the gadget's USB product id (hex, default 0104)"
    )
    tp.add_argument(
        "--manufacturer", default=LAB_MANUFACTURER, help="the gadget's manufacturer string ('' to match any)"
    )
    tp.add_argument("--user-sip-address", required=True)
    tp.add_argument("--credential", required=True, help="USER:PASSWORD, or USER with the password on stdin")
    tp.add_argument("--target-uri", required=True, help="the pool's CertProv URL")
    tp.add_argument("--resolve", action="append", default=[], metavar="NAME=ADDR")
    tp.add_argument("--anon-port", type=port, default=80)
    tp.add_argument("--roots-dir", type=Path, action="append", default=[])
    tp.add_argument("--timeout", type=float, default=10.0)
    tp.add_argument("--json", action="store_true")
    ts = tsub.add_parser(
        "serve", help="phone side: answer the PC on the gadget's tty and install the identity"
    )
    ts.add_argument("--port", default="/dev/phoneprov-tether")
    ts.add_argument("--state-dir", type=Path, default=Path("/var/lib/phoneprov"))
    ts.add_argument("--roots-dir", type=Path, action="append", default=[])


def run_rig(args: argparse.Namespace) -> int:
    from hal.errors import HalError
    from tools import rig

    if args.rig_command == "emulate":
        emu = rig.emulator(args.board)
        print(f"emulated {args.board} on {emu.port} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        finally:
            emu.stop()
    phones = rig.load_rig(args.rig)
    if args.rig_command == "serve":
        return _serve(phones, args.listen, args.cooldown)
    try:
        if args.rig_command == "status":
            out: Any = rig.status(phones, list(args.phone))
        elif args.rig_command == "cycle":
            out = rig.power_cycle(phones, args.phone, args.wait)
        else:
            out = rig.switch(phones, args.phone, args.rig_command == "on")
    except HalError as exc:
        print(f"phoneprov: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for row in out if isinstance(out, list) else [out]:
            print("  ".join(f"{k}={v}" for k, v in row.items() if v is not None))
    rows = out if isinstance(out, list) else [out]
    for row in rows:
        if row.get("error"):
            print(f"phoneprov: {row['phone']}: {row['error']}", file=sys.stderr)
    return 1 if any(row.get("error") for row in rows) else 0


def run_tether(args: argparse.Namespace) -> int:
    from boot.tether import tether_serve
    from tools.tether import tether_provision

    if args.tether_command == "serve":
        anchors = certs.anchor_files(extra_dirs=(certs.ROOTS_DIR, *args.roots_dir))
        return tether_serve(args.port, args.state_dir, anchors)
    user, sep, password = args.credential.partition(":")
    if not sep:
        password = sys.stdin.readline().rstrip("\n")
    resolve = dict(name_addr(item) for item in args.resolve)
    return tether_provision(
        args.port,
        args.user_sip_address,
        (user, password),
        args.target_uri,
        resolve,
        args.anon_port,
        [certs.ROOTS_DIR, *args.roots_dir],
        args.json,
        phone_serial=args.serial,
        timeout_s=args.timeout,
        usb=(args.vid, args.pid, args.manufacturer or None),
    )


def _serve(phones: dict[str, Any], listen: str, cooldown_s: float) -> int:
    from tools.rigserve import RigService, serve

    if not 0 <= cooldown_s <= 86400:
        raise ValueError("--cooldown must be 0..86400 seconds")
    server = serve(RigService(phones, cooldown_s), server_address(listen, "--listen", 8080))
    host, bound = str(server.server_address[0]), int(server.server_address[1])
    print(
        f"rig: {len(phones)} phones; POST http://{host}:{bound}/phones/<name>/cycle (Ctrl-C to stop)",
        flush=True,
    )
    try:
        threading.Event().wait()
    finally:
        server.shutdown()
        server.server_close()
    return 0
