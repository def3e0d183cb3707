"""The command line of ``phoneprov test-bootstrap`` (the logic is tools/bootstrap.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import certs
from agent.stages import StageResult
from agent.trace import Step
from agent.truststore import TrustStore
from tools.argtypes import name_addr
from tools.bootstrap import BootstrapResult, BootstrapTarget, test_bootstrap

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
    b.add_argument("--registrar-port", type=int, help="SIP/TLS port when DHCP does not say (default 5061)")
    b.add_argument("--anon-port", type=int, default=80, help="HTTP port of the anonymous root-chain site")
    b.add_argument("--ntp-port", type=int, default=123)
    b.add_argument("--resolve", action="append", default=[], metavar="NAME=ADDR", help="like curl --resolve")
    b.add_argument("--roots-dir", type=Path, action="append", default=[], help="extra lab roots (PEM files)")
    b.add_argument("--retry-after", type=float, default=5.0, help="seconds before retrying a 3005/4104")
    b.add_argument("--timeout", type=float, default=10.0, help="per-request timeout in seconds")
    b.add_argument("--verbose", action="store_true", help="print every stage and message as it happens")
    b.add_argument("--json", action="store_true", help="one JSON document")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    target = BootstrapTarget(
        args.phone_or_ext,
        _pin(args.pin),
        args.user_sip_address,
        args.target_uri,
        args.target_fqdn,
        _address(args.dhcp_server) if args.dhcp_server else None,
        args.interface,
        args.registrar_port,
        args.anon_port,
        args.ntp_port,
        dict(name_addr(item) for item in args.resolve),
        args.timeout,
        args.retry_after,
    )
    if not (args.target_uri or args.target_fqdn or args.dhcp_server or args.interface):
        raise ValueError(
            "give --target-uri/--target-fqdn, or --dhcp-server or --interface for DHCP discovery"
        )
    trust = TrustStore.from_pem_files(certs.anchor_files(extra_dirs=(certs.ROOTS_DIR, *args.roots_dir)))
    verbose = args.verbose and not args.json

    def stage(r: StageResult) -> None:
        code = r.code or ""
        print(
            f"  {r.stage.value:<13} {r.result:<7} {r.ms:>8.1f} ms  {code:<17} {r.detail}",
            file=out,
            flush=True,
        )

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
    if given == "-":
        return sys.stdin.readline().strip()
    if given:
        return given
    if os.environ.get(PIN_ENV):
        return os.environ[PIN_ENV].strip()
    raise ValueError(f"give --pin (or '-' to read it from stdin, or set {PIN_ENV})")


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.partition(":")
    try:
        return str(_ipv4(host)), int(port) if sep else 67
    except ValueError:
        raise ValueError(f"--dhcp-server takes ADDR[:PORT] with an IPv4 address, got {text!r}") from None


def _ipv4(text: str) -> object:
    from ipaddress import IPv4Address

    return IPv4Address(text)
