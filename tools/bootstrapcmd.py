"""The command line of ``phoneprov test-bootstrap`` (the logic is tools/bootstrap.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import certs
from agent.stages import StageResult
from agent.trace import Step
from agent.truststore import TrustStore
from boot.configtable import dns_name
from tools.argtypes import name_addr, port, server_address
from tools.bootstrap import BootstrapResult, BootstrapTarget, test_bootstrap
from tools.report import stage_line

PIN_ENV = "PHONEPROV_PIN"
FIELDS = ("TargetUri", "TargetFqdn", "Result", "Latency", "Error", "Diagnosis")


def add_parser(sub: Any) -> None:
    b = sub.add_parser(
        "test-bootstrap",
        help="like Test-CsPhoneBootstrap: number + PIN → DHCP → … → SIGNED_IN, with a throwaway key",
        description="Sign in exactly like a phone: DHCP discovery (unless the targets are given), time, the Web "
        "Services chain, the PIN web ticket, a certificate for a throwaway key, and REGISTER with TLS-DSK. "
        "Exit 0 on success, 1 on failure, 3 when it succeeded only on the retry after a data store failure "
        "(sporadic); 2 for usage errors.",
    )
    b.add_argument("--phone-or-ext", required=True, help="the number or extension the user types")
    b.add_argument("--pin", help=f"the PIN; '-' reads it from stdin (default: ${PIN_ENV})")
    b.add_argument("--user-sip-address", help="the SIP URI expected for this number (sip:alice@lab.test)")
    b.add_argument("--target-uri", help="CertProv URL: skip DHCP for it")
    b.add_argument("--target-fqdn", help="registrar / pool FQDN: skip DHCP for it")
    where = b.add_mutually_exclusive_group()
    where.add_argument("--dhcp-server", metavar="ADDR[:PORT]", help="send the INFORM to this server (a lab)")
    where.add_argument("--interface", help="broadcast the INFORM on this interface (needs root)")
    b.add_argument("--registrar-port", type=port, help="SIP/TLS port when DHCP does not say (default 5061)")
    b.add_argument("--anon-port", type=port, default=80, help="HTTP port of the anonymous root-chain site")
    b.add_argument("--ntp-port", type=port, default=123)
    b.add_argument("--resolve", action="append", default=[], metavar="NAME=ADDR", help="like curl --resolve")
    b.add_argument("--roots-dir", type=Path, action="append", default=[], help="extra lab roots (PEM files)")
    b.add_argument("--retry-after", type=float, default=5.0, help="seconds before retrying a 3005/4104")
    b.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    b.add_argument("--verbose", action="store_true", help="print every stage and message as it happens")
    b.add_argument("--json", action="store_true", help="one JSON document")


def _check(args: argparse.Namespace) -> None:
    """Usage mistakes are one line and exit 2 before anything is sent (not a stage failure 30 s later)."""
    if args.target_uri is not None:
        parts = urlsplit(args.target_uri)
        if parts.scheme.lower() != "https" or not parts.hostname:
            raise ValueError(f"--target-uri must be an https:// URL with a host, got {args.target_uri!r}")
    if args.target_fqdn is not None and not dns_name(args.target_fqdn):
        raise ValueError(f"--target-fqdn must be a DNS name, got {args.target_fqdn!r}")
    if not (args.target_uri or args.target_fqdn or args.dhcp_server or args.interface):
        raise ValueError(
            "give --target-uri/--target-fqdn, or --dhcp-server or --interface for DHCP discovery"
        )
    if not 0 <= args.retry_after <= 3600 or not 0 < args.timeout <= 300:
        raise ValueError("--retry-after must be 0..3600 seconds and --timeout 0..300 seconds")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    _check(args)
    target = BootstrapTarget(
        args.phone_or_ext,
        _pin(args.pin),
        args.user_sip_address,
        args.target_uri,
        args.target_fqdn,
        server_address(args.dhcp_server, "--dhcp-server", 67) if args.dhcp_server else None,
        args.interface,
        args.registrar_port,
        args.anon_port,
        args.ntp_port,
        dict(name_addr(item) for item in args.resolve),
        args.timeout,
        args.retry_after,
    )
    trust = TrustStore.from_pem_files(certs.anchor_files(extra_dirs=(certs.ROOTS_DIR, *args.roots_dir)))
    verbose = args.verbose and not args.json

    def stage(r: StageResult) -> None:
        print(stage_line(r), file=out, flush=True)

    def step(s: Step) -> None:
        print(f"      {s.line()}", file=out, flush=True)

    result = test_bootstrap(
        target, trust, on_stage=stage if verbose else None, on_step=step if verbose else None
    )
    _print(result, args.json, out)
    return result.exit_code


def _print(result: BootstrapResult, as_json: bool, out: TextIO) -> None:
    doc = result.as_dict()
    if as_json:
        print(json.dumps(doc, indent=2), file=out)
        return
    for key in FIELDS:
        print(f"{key:<11}: {doc[key]}", file=out)


def _pin(given: str | None) -> str:
    """The PIN from the argument, stdin ('-') or the environment — never echoed back."""
    pin = sys.stdin.readline().strip() if given == "-" else (given or os.environ.get(PIN_ENV, "")).strip()
    if not pin:
        raise ValueError(f"give the PIN: --pin PIN, --pin - (read from stdin) or ${PIN_ENV}")
    return pin
