"""`phoneprov`: the one entry point. Parses arguments, delegates, prints; nothing else.

Every command has --help, exits 0 only on success, and reports bad input as one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import certs
from agent.stages import AgentError
from boot.config import ConfigError as AgentConfigError
from hal.errors import HalError
from tools import bootstrapcmd, demo, logs, poolusers, report, rigcmd
from tools.argtypes import name_addr, port, server_address
from tools.pool import config as pool_config
from tools.pool.errors import PoolError

EX_CONFIG = 78  # sysexits.h


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
    which = d.add_mutually_exclusive_group()
    which.add_argument(
        "--fault",
        choices=demo.FAULTS,
        help="datastore: store unavailable (3005); chain: no path to a shipped root; "
        "registrar: registrar unhealthy (4105)",
    )
    which.add_argument(
        "--rig",
        action="store_true",
        help="power the phone from relay 2 of an emulated LCUS-4 board on a pty; the real rig code "
        "power-cycles it and measures the time to SIGNED_IN",
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

    bt = sub.add_parser(
        "boot",
        help="the phone's firmware entry (run by systemd): sign in and stay signed in",
        description="Sign in as configured in agent.toml, stay signed in, renew, retry; report to systemd "
        "(sd_notify) and on the local status endpoint.",
    )
    bt.add_argument("--config", type=Path, default=Path("/etc/phoneprov/agent.toml"))
    bt.add_argument("--once", action="store_true", help="one sign-in attempt, then exit (0 = signed in)")
    st = sub.add_parser("status", help="what the phone is doing: stage, certificate, expiry, last error")
    st.add_argument("--url", default="http://127.0.0.1:8765/status")
    st.add_argument("--json", action="store_true")

    rigcmd.add_parsers(sub, _Parser)

    dc = sub.add_parser(
        "dhcp-config",
        help="like DHCPUtil: the option 43/120 settings for a real DHCP server",
        description="Print a ready-to-paste configuration that makes a DHCP server hand Lync-style phones the "
        "CertProv URL (option 43, vendor class MS-UC-Client), the registrar (option 120) and time (option 42).",
    )
    dc.add_argument("--web-fqdn", required=True, help="Web Services (CertProv) FQDN")
    dc.add_argument("--web-port", type=port, default=443)
    dc.add_argument("--certprov-path", default="/CertProv/CertProvisioningService.svc")
    dc.add_argument("--sip-server", required=True, help="registrar / pool FQDN for option 120")
    dc.add_argument("--ntp", action="append", default=[], help="NTP server address (option 42), repeatable")
    dc.add_argument(
        "--format", required=True, choices=("dnsmasq", "dnsmasq-hex", "kea", "isc", "windows", "hex")
    )
    dc.add_argument("--subnet", help="Kea/ISC: the subnet the phones are on, e.g. 192.0.2.0/24")
    dc.add_argument("--interface", help="Kea/dnsmasq: the interface to serve")

    disc = sub.add_parser(
        "discover",
        help="what a phone on this port would learn from DHCP (and DNS)",
        description="Send the phone's DHCPINFORM (vendor class MS-UC-Client) and show the CertProv URL, registrar, "
        "time servers, domain and VLAN, and where each came from. Exit 1 with the DHCP_INFORM diagnosis when "
        "nothing answers.",
    )
    where = disc.add_mutually_exclusive_group(required=True)
    where.add_argument("--interface", help="broadcast from port 68 on this interface (needs root)")
    where.add_argument("--server", help="ask this DHCP server directly: ADDR[:PORT]")
    disc.add_argument(
        "--vlan", action="store_true", help="also send the CPE-OCPHONE INFORM for the voice VLAN"
    )
    disc.add_argument("--tries", type=int, default=3, help="INFORMs to send (default 3)")
    disc.add_argument(
        "--interval", type=float, default=4.0, help="first wait in seconds, doubling (default 4)"
    )
    disc.add_argument("--json", action="store_true")

    ca = sub.add_parser(
        "test-clientauth",
        help="like Test-CsClientAuth: credential → ticket → certificate → REGISTER",
        description="Sign a user in with a credential (HTTP Basic in the lab): web ticket, a certificate for a "
        "throwaway key (CERT_REQUEST/CERT_PUBLISH), then REGISTER with TLS-DSK. Exit 0 only on success.",
    )
    ca.add_argument("--user-sip-address", required=True, help="sip:alice@lab.test")
    ca.add_argument("--credential", required=True, help="USER:PASSWORD, or USER with the password on stdin")
    ca.add_argument("--target-fqdn", help="registrar / pool FQDN (default: the host of --target-uri)")
    ca.add_argument(
        "--target-uri", help="CertProv URL (default: https://FQDN/CertProv/CertProvisioningService.svc)"
    )
    ca.add_argument("--registrar-port", type=port, default=5061)
    ca.add_argument("--anon-port", type=port, default=80, help="HTTP port of the anonymous root-chain site")
    ca.add_argument("--resolve", action="append", default=[], metavar="NAME=ADDR", help="like curl --resolve")
    ca.add_argument("--roots-dir", type=Path, action="append", default=[], help="extra lab roots (PEM files)")
    ca.add_argument("--json", action="store_true")
    ca.add_argument("--verbose", action="store_true", help="print each stage as it completes")

    bootstrapcmd.add_parser(sub)
    logs.add_parser(sub)

    pool = sub.add_parser("pool", help="run a lab pool node", description="Lab pool node operations.")
    psub = pool.add_subparsers(dest="pool_command", required=True, parser_class=_Parser)
    serve = psub.add_parser("serve", help="run a pool node until interrupted")
    serve.add_argument("--config", type=Path, required=True, help="pool TOML (see tools/pool/config.py)")
    poolusers.add_parser(psub, _Parser)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _build().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "certs":
            return _certs(args)
        if args.command == "test-clientauth":
            return _client_auth(args)
        if args.command == "test-bootstrap":
            return bootstrapcmd.run(args)
        if args.command == "logs":
            return logs.run(args)
        if args.command == "discover":
            return _discover(args)
        if args.command == "dhcp-config":
            return _dhcp_config(args)
        if args.command == "rig":
            return rigcmd.run_rig(args)
        if args.command == "tether":
            return rigcmd.run_tether(args)
        if args.command == "boot":
            from tools.bootcmd import boot_main

            return boot_main(args.config, once=args.once)
        if args.command == "status":
            from tools.bootcmd import status_main

            return status_main(args.url, as_json=args.json)
        return _pool(args)
    except PoolError as exc:
        print(f"phoneprov: error: {exc.detail}", file=sys.stderr)
        return 2
    except AgentConfigError as exc:
        print(f"phoneprov: error: {exc}", file=sys.stderr)
        return EX_CONFIG  # the unit's RestartPreventExitStatus: a broken agent.toml is not retried
    except (AgentError, HalError, certs.RootError, ValueError, OSError) as exc:
        print(f"phoneprov: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line for the user; the traceback with PHONEPROV_DEBUG=1
        if os.environ.get("PHONEPROV_DEBUG"):
            raise
        print(
            f"phoneprov: internal error: {type(exc).__name__}: {exc} (PHONEPROV_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return 70  # EX_SOFTWARE


def _demo(args: argparse.Namespace) -> int:
    if args.rig:
        return _rig_demo(args)
    emit = (lambda kind, value: None) if args.json else report.text_printer(sys.stdout)
    outcome = demo.run_demo(args.fault, args.workdir, emit)
    if args.json:
        print(json.dumps(report.demo_document(outcome), indent=2))
    return outcome.exit_code


def _rig_demo(args: argparse.Namespace) -> int:
    from tools.demorig import run_rig_demo
    from tools.demorig_report import rig_demo_document, rig_demo_printer

    emit = (lambda kind, value: None) if args.json else rig_demo_printer(sys.stdout)
    outcome = run_rig_demo(args.workdir, emit)
    if args.json:
        print(json.dumps(rig_demo_document(outcome), indent=2))
    return outcome.exit_code


def _client_auth(args: argparse.Namespace) -> int:
    from agent.truststore import TrustStore
    from tools.diag import ClientAuthTarget, client_auth

    user, sep, password = args.credential.partition(":")
    if not sep:
        password = sys.stdin.readline().rstrip("\n")
    resolve = dict(name_addr(item) for item in args.resolve)
    target = ClientAuthTarget(
        args.user_sip_address,
        (user, password),
        args.target_fqdn,
        args.target_uri,
        args.registrar_port,
        args.anon_port,
        resolve,
    )
    trust = TrustStore.from_pem_files(certs.anchor_files(extra_dirs=(certs.ROOTS_DIR, *args.roots_dir)))
    verbose = report.stage_line if args.verbose and not args.json else None
    result = client_auth(
        target, trust, on_stage=(lambda r: print(verbose(r), flush=True)) if verbose else None
    )
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        doc = result.as_dict()
        for key in ("TargetFqdn", "Result", "Latency", "Error"):
            print(f"{key:<11}: {doc[key]}")
        d = result.diagnosis
        print(f"{'Diagnosis':<11}: {f'{d.stage} {d.code}: {d.problem} Remedy: {d.remedy}' if d else ''}")
    return 0 if result.ok else 1


def _dhcp_config(args: argparse.Namespace) -> int:
    from tools.dhcpconfig import UcDhcpSettings, render

    settings = UcDhcpSettings(
        web_fqdn=args.web_fqdn,
        sip_server=args.sip_server,
        web_port=args.web_port,
        certprov_path=args.certprov_path,
        ntp=tuple(args.ntp),
        subnet=args.subnet,
        interface=args.interface,
    )
    sys.stdout.write(render(settings, args.format))
    return 0


def _discover(args: argparse.Namespace) -> int:
    import random
    from ipaddress import IPv4Address

    from agent.clocks import SystemClock
    from agent.diagnosis import diagnose
    from agent.discovery import DiscoveryConfig, discover
    from agent.stages import AgentError

    if not 1 <= args.tries <= 10 or not 0.1 <= args.interval <= 64:
        raise ValueError("--tries must be 1..10 and --interval 0.1..64 seconds")
    if args.interface:
        cfg = DiscoveryConfig(
            interface=args.interface, tries=args.tries, interval_s=args.interval, vlan=args.vlan
        )
    else:
        address, number = server_address(args.server, "--server", 67)
        cfg = DiscoveryConfig(
            ciaddr=IPv4Address("127.0.0.1") if address.startswith("127.") else None,
            server=(address, number),
            bind=("0.0.0.0", 0),
            tries=args.tries,
            interval_s=args.interval,
            vlan=args.vlan,
        )
    try:
        found = discover(cfg, SystemClock(), lambda: random.getrandbits(32))
    except AgentError as exc:
        d = diagnose(exc)
        failed = {"result": "failed", "diagnosis": d.as_dict(), "detail": exc.detail}
        text = f"{d.stage} {d.code}: {exc.detail}\nremedy: {d.remedy}"
        print(json.dumps(failed, indent=2) if args.json else text)
        return 1
    doc = report.discovery_document(found)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for key, value in doc["found"].items():
            print(f"{key:<13} {value if value not in (None, []) else '-':<60} {doc['sources'].get(key, '')}")
    return 0


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

    if args.pool_command == "user":
        return poolusers.run(args)
    cfg = pool_config.load(args.config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with PoolNode(cfg) as node:
        p = node.ports
        print(
            f"pool {cfg.fqdn} node {cfg.node}: dhcp {p.dhcp or 'off'} sntp {p.sntp} http {p.http} https {p.https} "
            f"sip/tls {p.sip} admin {p.admin}; "
            f"CertProv {node.certprov_url}",
            flush=True,
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
