"""The PC's side of the tether: find the phone on USB, get its CSR, obtain and publish the certificate from
the pool's Web Services with the user's credential, and hand certificate + chain back to the phone.

The pool stages run exactly as everywhere else (``agent.runner.StageRunner``: ROOT_CHAIN, WEB_TICKET,
CERT_REQUEST, CERT_PUBLISH), so a refused credential or an unavailable data store is diagnosed with the same
words as on a phone or in ``test-clientauth``. The phone's own part of CERT_REQUEST — key, CSR, checking
and installing the certificate — runs over the cable; a failure there is a CERT_REQUEST diagnosis with a
``TETHER_*`` code (or ``BadCertificate`` when the phone refused the certificate). The private key never
crosses the cable: the PC only ever holds the CSR.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import serial.tools.list_ports
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent import enroll, ticket
from agent.clocks import Clock, SystemClock
from agent.diagnosis import Diagnosis, lookup
from agent.net import PhoneHttp, Resolver
from agent.runner import StageFailed, StageRunner
from agent.stages import X509_ERRORS, Outcome, Stage, StageError, StageResult, one_line
from agent.trust import establish_trust
from agent.truststore import TrustStore, ValidatedChain
from hal.errors import HalError
from hal.tether.device import thumbprint
from hal.tether.framing import (
    PROTOCOL_VERSION,
    Ack,
    Csr,
    CsrRequest,
    ErrorMsg,
    Hello,
    IssuedCertificate,
    Message,
)
from hal.tether.link import Link, LinkClosed, Refused, Requester

M = TypeVar("M", Hello, Csr, Ack)
T = TypeVar("T")
POOL_STAGES = (Stage.ROOT_CHAIN, Stage.WEB_TICKET, Stage.CERT_REQUEST, Stage.CERT_PUBLISH)
STEPS = ("HELLO", "CSR", "INSTALL")
HELLO_TRIES = 3
LAB_VID, LAB_PID = 0x1D6B, 0x0104
LAB_MANUFACTURER = "phoneprov"  # boot/usb-gadget.sh's default (PHONEPROV_USB_MANUFACTURER)

# code → (problem, remedy); stage CERT_REQUEST (the phone's part of it runs over the cable).
_TETHER: dict[str, tuple[str, str]] = {
    "TETHER_NO_ANSWER": (
        "The phone did not answer on the tether.",
        "Check the USB cable, the port (the phone's serial number) and that the phone's tether service runs.",
    ),
    "TETHER_LINK_LOST": (
        "The tether link was lost during provisioning.",
        "Reconnect the cable and provision again; the phone keeps its old identity unless it acknowledged.",
    ),
    "TETHER_TIMEOUT": ("The phone stopped answering on the tether.", "Check the phone's log, then retry."),
    "TETHER_FRAME": (
        "Frames kept arriving damaged on the tether.",
        "Use another cable or port; make sure nothing else (ModemManager, a terminal) has the port open.",
    ),
    "TETHER_VERSION": ("The phone speaks another tether protocol version.", "Run one phoneprov version."),
    "TETHER_PROTOCOL": (
        "The phone answered with something the tether protocol does not allow here.",
        "Run the same phoneprov version on both sides; the detail says what was refused.",
    ),
    "TETHER_BAD_CSR": (
        "The phone's CSR does not verify or is not for the requested user.",
        "Check the SIP address given and the phone's log.",
    ),
    "TETHER_INSTALL": (
        "The phone could not store the certificate and key.",
        "Check the phone's state directory (space, permissions) and its log, then retry.",
    ),
}


class TetherFailure(Exception):
    """A tether step failed: ``code`` is a key of the tether catalogue or ``BadCertificate``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail

    def diagnosis(self) -> Diagnosis:
        if self.code in _TETHER:
            problem, remedy = _TETHER[self.code]
            return Diagnosis(Stage.CERT_REQUEST, self.code, problem, remedy)
        return lookup(Stage.CERT_REQUEST, self.code)


@dataclass(frozen=True)
class TetherStep:
    """One exchange with the phone (HELLO, CSR, INSTALL), reported like a stage."""

    step: str
    result: Outcome
    code: str | None = None
    detail: str = ""
    ms: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "step": self.step,
            "result": self.result,
            "code": self.code,
            "detail": self.detail,
            "ms": round(self.ms, 1),
        }


@dataclass(frozen=True)
class ProvisionResult:
    phone_serial: str
    device_id: str
    steps: tuple[TetherStep, ...]
    stages: tuple[StageResult, ...]
    diagnosis: Diagnosis | None
    thumbprint: str | None

    @property
    def ok(self) -> bool:
        return self.diagnosis is None and self.thumbprint is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": "ok" if self.ok else "failed",
            "phone": {"serial": self.phone_serial, "device_id": self.device_id},
            "tether": [s.as_dict() for s in self.steps],
            "stages": [s.as_dict() for s in self.stages],
            "thumbprint": self.thumbprint,
            "diagnosis": self.diagnosis.as_dict() if self.diagnosis else None,
        }


def find_phone(
    vid: int = LAB_VID,
    pid: int = LAB_PID,
    serial: str | None = None,
    *,
    manufacturer: str | None = LAB_MANUFACTURER,
    comports: Callable[[], Iterable[Any]] | None = None,
) -> str:
    """The device path of the one phone plugged in: VID:PID, the gadget's manufacturer string (1d6b:0104 is a
    generic Linux Foundation id that other gadgets use too) and, when given, its serial number."""
    ports = list((comports or serial_ports)())
    found = [
        p
        for p in ports
        if p.vid == vid
        and p.pid == pid
        and (manufacturer is None or getattr(p, "manufacturer", None) == manufacturer)
        and (serial is None or p.serial_number == serial)
    ]
    wanted = f"{vid:04x}:{pid:04x}" + (f" from {manufacturer!r}" if manufacturer else "")
    wanted += f" with serial {serial}" if serial else ""
    if not found:
        raise HalError("usb", "NO_PHONE", f"no phone {wanted} on USB", "Plug the phone in (its USB-C port).")
    if len(found) > 1:
        serials = ", ".join(sorted(str(p.serial_number) for p in found))
        raise HalError(
            "usb", "AMBIGUOUS", f"{len(found)} phones {wanted} on USB ({serials}); give the serial"
        )
    return str(found[0].device)


def serial_ports() -> list[Any]:
    return list(serial.tools.list_ports.comports())


_HAL_CODES = {"LINK_LOST": "TETHER_LINK_LOST", "DAMAGED": "TETHER_FRAME", "MALFORMED": "TETHER_PROTOCOL"}
_PHONE_CODES = {
    "VERSION": "TETHER_VERSION",
    "INSTALL": "TETHER_INSTALL",
    "BadCertificate": "BadCertificate",
}


def _exchange(
    requester: Requester,
    msg: Message,
    want: type[M],
    step: str,
    quiet_code: str,
    timeout_s: float | None = None,
) -> M:
    """One request to the phone, its failures turned into tether diagnoses (``quiet_code``: no answer)."""
    try:
        return requester.request(msg, want, timeout_s)
    except Refused as exc:
        raise TetherFailure(
            _PHONE_CODES.get(exc.peer_code, "TETHER_PROTOCOL"), f"{step}: {exc.detail}"
        ) from None
    except HalError as exc:
        code = quiet_code if exc.code == "TIMEOUT" else _HAL_CODES.get(exc.code, "TETHER_PROTOCOL")
        what = f"link {exc.detail}" if isinstance(exc, LinkClosed) else exc.detail
        raise TetherFailure(code, f"{step}: {what}") from None


class _Session:
    """The tether steps of one provisioning, recorded like stages."""

    def __init__(self, requester: Requester, clock: Clock, on_progress: Callable[[TetherStep], None] | None):
        self.requester, self.clock, self.on_progress = requester, clock, on_progress
        self.steps: list[TetherStep] = []

    def run(self, name: str, work: Callable[[], T], describe: Callable[[T], str]) -> T:
        start = self.clock.monotonic()
        try:
            value = work()
        except TetherFailure as exc:
            self._record(TetherStep(name, "failed", exc.code, exc.detail, self._ms(start)))
            raise
        self._record(TetherStep(name, "ok", None, describe(value), self._ms(start)))
        return value

    def skip_rest(self) -> None:
        done = {s.step for s in self.steps}
        for name in STEPS:
            if name not in done:
                self._record(TetherStep(name, "skipped", detail="not reached"))

    def abort(self, why: str) -> None:
        """Tell the phone to drop the key waiting for a certificate; it may be gone already."""
        with contextlib.suppress(HalError):
            self.requester.send(ErrorMsg("ABORTED", why))

    def _record(self, step: TetherStep) -> None:
        self.steps.append(step)
        if self.on_progress:
            self.on_progress(step)

    def _ms(self, start: float) -> float:
        return (self.clock.monotonic() - start) * 1000.0


def provision(
    link: Link,
    certprov_url: str,
    user_sip: str,
    credential: tuple[str, str],
    trust: TrustStore,
    resolver: Resolver,
    anon_port: int = 80,
    timeout: float = 10.0,
    *,
    clock: Clock | None = None,
    on_progress: Callable[[TetherStep | StageResult], None] | None = None,
) -> ProvisionResult:
    """HELLO, CSR_REQUEST → CSR, the pool stages with the phone's CSR and device id, CERTIFICATE → ACK.

    ``timeout`` bounds each exchange with the phone and each HTTP request to the pool."""
    clock = clock or SystemClock()
    session = _Session(Requester(link, timeout, clock.monotonic), clock, on_progress)
    runner = StageRunner(clock, on_progress)
    hello: Hello | None = None
    thumb: str | None = None
    diagnosis: Diagnosis | None = None
    try:
        hello = session.run("HELLO", lambda: _hello(session.requester), _said)
        device_id = hello.device_id
        csr = session.run("CSR", lambda: _csr(session.requester, user_sip), _csr_said)
        pool = _PoolRun(certprov_url, user_sip, credential, trust, resolver, anon_port, timeout, clock)
        path = pool.run(runner, csr, device_id)
        thumb = session.run("INSTALL", lambda: _install(session.requester, path), lambda t: f"installed {t}")
    except TetherFailure as exc:
        diagnosis = exc.diagnosis()
    except StageFailed:
        diagnosis = runner.diagnosis
        err = runner.error
        session.abort(f"{err.stage} {err.code}: {err.detail}" if err and err.stage else "the pool refused")
    runner.skip_rest(POOL_STAGES)
    session.skip_rest()
    return ProvisionResult(
        hello.phone_serial if hello else "",
        hello.device_id if hello else "",
        tuple(session.steps),
        tuple(runner.results),
        diagnosis,
        thumb,
    )


def _hello(requester: Requester, tries: int = HELLO_TRIES) -> Hello:
    """HELLO, repeated within the timeout: a phone that opens its port late flushed what came before
    (pyserial discards pending input on open), and HELLO is harmless to repeat."""
    for attempt in range(1, tries + 1):
        try:
            reply = _exchange(
                requester,
                Hello(PROTOCOL_VERSION),
                Hello,
                "HELLO",
                "TETHER_NO_ANSWER",
                requester.timeout_s / tries,
            )
            break
        except TetherFailure as exc:
            if exc.code != "TETHER_NO_ANSWER" or attempt == tries:
                raise
    if reply.protocol_version != PROTOCOL_VERSION:
        detail = f"the phone speaks tether protocol {reply.protocol_version}, this PC {PROTOCOL_VERSION}"
        raise TetherFailure("TETHER_VERSION", f"HELLO: {detail}")
    if not reply.device_id.strip("{}"):
        raise TetherFailure("TETHER_PROTOCOL", "HELLO: the phone sent no device id")
    return reply


def _said(hello: Hello) -> str:
    return f"phone {hello.phone_serial or '?'}, device {hello.device_id}, protocol {hello.protocol_version}"


def _csr(requester: Requester, user_sip: str) -> x509.CertificateSigningRequest:
    """The phone's CSR, which must verify and name the user asked for (CN = SIP URI without ``sip:``)."""
    reply = _exchange(requester, CsrRequest(user_sip), Csr, "CSR", "TETHER_TIMEOUT")
    try:
        csr = x509.load_der_x509_csr(reply.der)
        valid = csr.is_signature_valid
        names = [str(a.value) for a in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    except X509_ERRORS as exc:
        raise TetherFailure("TETHER_BAD_CSR", f"CSR: not a PKCS#10 request: {one_line(exc)}") from None
    if not valid:
        raise TetherFailure("TETHER_BAD_CSR", "CSR: its self-signature does not verify")
    want = user_sip.removeprefix("sip:").lower()
    if [n.lower() for n in names] != [want]:
        raise TetherFailure("TETHER_BAD_CSR", f"CSR: subject CN {names} is not {want}")
    return csr


def _csr_said(csr: x509.CertificateSigningRequest) -> str:
    size = getattr(csr.public_key(), "key_size", "?")
    return f"CSR for {csr.subject.rfc4514_string()} (key {size} bits, kept on the phone)"


@dataclass(frozen=True)
class _PoolRun:
    """The pool stages, as test-clientauth runs them, but with the phone's CSR and device id."""

    certprov_url: str
    user_sip: str
    credential: tuple[str, str] = field(repr=False)
    trust: TrustStore
    resolver: Resolver
    anon_port: int
    timeout_s: float
    clock: Clock

    def run(self, runner: StageRunner, csr: x509.CertificateSigningRequest, device_id: str) -> ValidatedChain:
        http = PhoneHttp(self.resolver, self.timeout_s)
        try:
            return self._stages(runner, http, csr, device_id)
        finally:
            http.close()

    def _stages(
        self, runner: StageRunner, http: PhoneHttp, csr: x509.CertificateSigningRequest, device_id: str
    ) -> ValidatedChain:
        url, clock = self.certprov_url, self.clock
        trusted = runner.run(
            Stage.ROOT_CHAIN,
            lambda: establish_trust(self.trust, http, url, clock.now(), self.anon_port, self.timeout_s),
            lambda t: f"{t.validated.leaf.subject.rfc4514_string()} chains to a shipped root",
        )
        http.set_trust(trusted.https_trust(clock.now()))
        user, password = self.credential
        held = runner.run(
            Stage.WEB_TICKET,
            lambda: ticket.request_ticket_basic(
                http, ticket.find_endpoints(http, url), user, password, self.user_sip
            ),
            lambda t: f"ticket for {t.sip_uri} (Basic credential)",
        )
        cert_der, _ = runner.run(
            Stage.CERT_REQUEST,
            lambda: enroll.get_and_publish(http, held, csr.public_bytes(Encoding.DER), device_id),
            lambda r: f"GetAndPublishCert accepted (request {r[1]}, device {device_id})",
        )
        return runner.run(
            Stage.CERT_PUBLISH,
            lambda: _check_for_csr(cert_der, csr, self.trust, trusted.intermediates, clock.now()),
            lambda v: f"published and returned: serial {v.leaf.serial_number:032x}",
        )


def _check_for_csr(
    cert_der: bytes,
    csr: x509.CertificateSigningRequest,
    trust: TrustStore,
    intermediates: tuple[x509.Certificate, ...],
    at: datetime,
) -> ValidatedChain:
    """The certificate must carry the CSR's key and chain to the CertProv CA (the phone checks the rest with
    enroll.check_issued, which needs the private key the PC never has)."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except X509_ERRORS as exc:
        detail = f"the returned token is not a usable DER certificate: {one_line(exc)}"
        raise StageError(Stage.CERT_REQUEST, "BadCertificate", detail) from None
    if spki != csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        raise StageError(Stage.CERT_REQUEST, "BadCertificate", "the certificate is not for the phone's key")
    return trust.verify_client(cert, intermediates, at)


def _install(requester: Requester, path: ValidatedChain) -> str:
    """CERTIFICATE (leaf + the intermediates of the validated path) → the phone's ACK for that leaf."""
    msg = IssuedCertificate(
        path.leaf.public_bytes(Encoding.DER), tuple(c.public_bytes(Encoding.DER) for c in path.intermediates)
    )
    ack = _exchange(requester, msg, Ack, "INSTALL", "TETHER_TIMEOUT")
    expected = thumbprint(path.leaf)
    if ack.thumbprint != expected:
        raise TetherFailure(
            "TETHER_PROTOCOL", f"INSTALL: the phone acknowledged {ack.thumbprint}, not {expected}"
        )
    return ack.thumbprint
