"""The bodies of ``phoneprov tether provision`` (on the PC) and ``phoneprov tether serve`` (on the phone).

The CLI parses arguments and calls these; they open the port, run :mod:`hal.tether`, print, and return the
exit status (0 only when the phone acknowledged an installed certificate). Port, tether and trust problems
are one line on stderr with status 2, like every other command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import certs
from agent.net import Resolver
from agent.stages import AgentError, StageResult
from agent.truststore import TrustStore
from hal.errors import HalError
from hal.tether.host import (
    LAB_MANUFACTURER,
    LAB_PID,
    LAB_VID,
    ProvisionResult,
    TetherStep,
    find_phone,
    provision,
)
from hal.tether.link import SerialLink


def tether_provision(
    port_or_url: str | None,
    user_sip_address: str,
    credential: tuple[str, str],
    target_uri: str,
    resolve: Mapping[str, str],
    anon_port: int,
    roots_dirs: Sequence[Path],
    as_json: bool,
    *,
    phone_serial: str | None = None,
    timeout_s: float = 10.0,
    usb: tuple[int, int, str | None] = (LAB_VID, LAB_PID, LAB_MANUFACTURER),
    out: TextIO | None = None,
) -> int:
    """Provision the phone on ``port_or_url`` (default: the one phone found on USB, or the one with
    ``phone_serial``) for ``user_sip_address`` with ``credential`` = (user, password)."""
    out = out or sys.stdout
    try:
        port = port_or_url or find_phone(usb[0], usb[1], phone_serial, manufacturer=usb[2])
        trust = TrustStore.from_pem_files(certs.anchor_files(extra_dirs=(certs.ROOTS_DIR, *roots_dirs)))
        link = SerialLink.open(port)
    except (HalError, AgentError, OSError) as exc:
        print(f"phoneprov: error: {exc}", file=sys.stderr)
        return 2
    resolver = Resolver({name.lower(): addr for name, addr in resolve.items()})
    progress = None if as_json else (lambda item: print(_line(item), file=out, flush=True))
    if not as_json:
        print(f"tether {port}: provisioning {user_sip_address} via {target_uri}", file=out, flush=True)
    try:
        result = provision(
            link,
            target_uri,
            user_sip_address,
            credential,
            trust,
            resolver,
            anon_port,
            timeout_s,
            on_progress=progress,
        )
    finally:
        link.close()
    if as_json:
        print(json.dumps({"port": port, **result.as_dict()}, indent=2), file=out)
    else:
        _summary(result, out)
    return 0 if result.ok else 1


def _line(item: TetherStep | StageResult) -> str:
    """Aligned like tools.report.stage_line (not imported: the phone side must not load the pool's code)."""
    name = item.stage.value if isinstance(item, StageResult) else f"tether {item.step}"
    code = item.code or ""
    return f"  {name:<14} {item.result:<7} {item.ms:>8.1f} ms  {code:<17} {item.detail}"


def _summary(result: ProvisionResult, out: TextIO) -> None:
    print(f"{'Phone':<11}: {result.phone_serial or '?'} {result.device_id}", file=out)
    print(f"{'Result':<11}: {'Success' if result.ok else 'Failure'}", file=out)
    print(f"{'Thumbprint':<11}: {result.thumbprint or ''}", file=out)
    d = result.diagnosis
    print(
        f"{'Diagnosis':<11}: {f'{d.stage} {d.code}: {d.problem} Remedy: {d.remedy}' if d else ''}", file=out
    )
