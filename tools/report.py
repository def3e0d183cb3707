"""How results look to people (aligned text, shown as it happens) and to scripts (one stable JSON document).

The JSON shape is an interface lab scripts rely on (issue 2):
``{"result", "stages": [{"stage","result","code","detail","ms"}], "certificate": {...}, "published": {...},
"registration": {...} | null, "diagnosis": {...} | null}`` — fault demos add ``fault``, ``diagnosis_correct`` and ``recovery`` (the same
shape for the boot after the repair).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from cryptography import x509

from agent.discovery import Discovery
from agent.stages import StageResult
from tools.demo import Attempt, DemoOutcome
from tools.pool.ca import thumbprint


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def certificate_info(cert: x509.Certificate) -> dict[str, str]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(cert.not_valid_after_utc),
        "thumbprint": thumbprint(cert),
    }


def attempt_document(attempt: Attempt) -> dict[str, Any]:
    run = attempt.run
    mine = run.certificate
    published = None
    if mine is not None:
        published = next(
            (row for row in attempt.published if row.get("thumbprint") == thumbprint(mine)), None
        )
    return {
        "result": "ok" if run.ok else "failed",
        "stages": [r.as_dict() for r in run.results],
        "certificate": certificate_info(mine) if mine is not None else None,
        "published": _public_row(published) if published else None,
        "registration": _registration(attempt, mine),
        "diagnosis": run.diagnosis.as_dict() if run.diagnosis else None,
    }


def _registration(attempt: Attempt, mine: x509.Certificate | None) -> dict[str, Any] | None:
    """The registrar's binding made with this boot's certificate, as the data store holds it."""
    if mine is None or attempt.run.registered is None:
        return None
    return next((r for r in attempt.registrations if r.get("thumbprint") == thumbprint(mine)), None)


def _public_row(row: dict[str, Any]) -> dict[str, Any]:
    """The data-store row without the bulky DER (the thumbprint identifies it)."""
    return {k: v for k, v in row.items() if k != "der"}


def demo_document(outcome: DemoOutcome) -> dict[str, Any]:
    doc = attempt_document(outcome.attempts[0])
    doc["pool"] = outcome.pool
    if outcome.fault is not None:
        doc["fault"] = outcome.fault
        doc["diagnosis_correct"] = outcome.diagnosis_correct
        doc["recovery"] = attempt_document(outcome.attempts[-1])
    return doc


def discovery_document(found: Discovery) -> dict[str, Any]:
    """What `phoneprov discover` prints: each item and where it came from."""
    return {
        "result": "ok",
        "found": {
            "certprov_url": found.certprov_url,
            "registrar": found.registrar_fqdn,
            "registrar_port": found.registrar_port or 5061,
            "ntp": list(found.ntp_servers),
            "dns": list(found.dns_servers),
            "domain": found.domain,
            "vlan": found.vlan,
            "answered_by": found.answered_by,
        },
        "sources": {
            "certprov_url": found.sources.get("certprov_url", ""),
            "registrar": found.sources.get("registrar", ""),
            "ntp": found.sources.get("ntp", ""),
            "domain": found.sources.get("domain", ""),
            "vlan": found.sources.get("vlan", ""),
            "answered_by": f"{found.informs_sent} INFORM(s) sent",
        },
    }


def stage_line(r: StageResult) -> str:
    code = r.code or ""
    return f"  {r.stage.value:<13} {r.result:<7} {r.ms:>8.1f} ms  {code:<17} {r.detail}"


def text_printer(out: TextIO) -> Callable[[str, object], None]:
    """Prints demo events as they happen: progress is visible while a stage waits on the network."""

    def emit(kind: str, value: object) -> None:
        if kind == "pool":
            p = value.ports  # type: ignore[attr-defined]
            cfg = value.cfg  # type: ignore[attr-defined]
            print(
                f"lab pool {cfg.fqdn} (node {cfg.node}) on {cfg.bind}: dhcp {p.dhcp}, sntp {p.sntp}, "
                f"http {p.http}, https {p.https}, sip/tls {p.sip}",
                file=out,
            )
        elif kind == "attempt":
            print(f"\n== phone boots: {value}", file=out)
            print(f"  {'STAGE':<13} {'RESULT':<7} {'TIME':>11}  {'CODE':<17} DETAIL", file=out)
        elif kind == "stage":
            assert isinstance(value, StageResult)
            print(stage_line(value), file=out, flush=True)
        elif kind == "result":
            assert isinstance(value, Attempt)
            _print_result(value, out)
        elif kind == "repair":
            print(f"\n-- repair: {value}", file=out)
        elif kind == "verdict":
            print(f"\ndiagnosis {'matches' if value else 'DOES NOT match'} the injected fault", file=out)

    return emit


def _print_result(attempt: Attempt, out: TextIO) -> None:
    doc = attempt_document(attempt)
    if doc["certificate"]:
        c = doc["certificate"]
        print(f"\n  certificate  {c['subject']}  serial {c['serial']}", file=out)
        print(
            f"               valid {c['not_before']} .. {c['not_after']}  thumbprint {c['thumbprint']}",
            file=out,
        )
    if doc["published"]:
        row = doc["published"]
        print("  data store   published row:", file=out)
        for key, value in row.items():
            print(f"                 {key:<13} {value}", file=out)
    else:
        print(f"  data store   {len(attempt.published)} certificate(s) published for this user", file=out)
    if doc["registration"]:
        reg = doc["registration"]
        print(
            f"  registrar    bound {reg['contact']} until {reg['expires_at']} (node {reg['node']})", file=out
        )
    if doc["diagnosis"]:
        d = doc["diagnosis"]
        print(f"\n  DIAGNOSIS    {d['stage']} {d['code']}: {d['problem']}", file=out)
        print(f"  REMEDY       {d['remedy']}", file=out)
