"""Regression tests from the issue-2 review: what a hostile network or client must not get from the pool."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from agent import ticket
from agent.clocks import SystemClock
from agent.discovery import DiscoveryConfig, discover
from agent.net import HttpReply, PhoneHttp, Resolver
from agent.stages import Stage, StageError
from agent.wire import certprov, mex, pkcs7, webticket
from tests.e2e.conftest import ALICE, ALICE_NUMBER, Lab, alice_ticket, post_cert_request

pytestmark = pytest.mark.timeout(60)
PIN_PATH = "/WebTicket/WebTicketService.svc/Pin"


def pin_fault(lab: Lab, http: PhoneHttp, username: str, pin: str) -> tuple[int, str, str]:
    rst = webticket.RstRequest(
        username, pin, "uuid:1", lab.node.certprov_url + "/WebTicket_Proof", bytes(32), None
    )
    reply = http.request(
        "POST",
        lab.node.base_url + PIN_PATH,
        Stage.WEB_TICKET,
        body=webticket.build_rst(rst),
        headers={"Content-Type": "text/xml; charset=utf-8"},
    )
    fault = webticket.parse_ticket_fault(reply.body, reply.header("x-ms-diagnostics"))
    return fault.code, fault.reason, reply.header("x-ms-diagnostics") or ""


def test_unknown_number_and_wrong_pin_look_the_same(lab: Lab, http: PhoneHttp) -> None:
    unknown = pin_fault(lab, http, "+19999999999", "86420")
    wrong = pin_fault(lab, http, ALICE_NUMBER, "86420")
    assert unknown[:2] == wrong[:2] == (2001, "PinInvalid")
    assert unknown[2].replace("+19999999999", "") == wrong[2].replace(ALICE_NUMBER, "")


def test_parallel_wrong_pins_cannot_outrun_the_lockout(lab: Lab, http: PhoneHttp) -> None:
    codes: list[int] = []
    lock = threading.Lock()

    def attempt() -> None:
        code = pin_fault(lab, http, ALICE_NUMBER, "86420")[0]
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [2001] * 3 + [2002] * 5  # PinPolicy(max_logon_attempts=3)
    record = lab.node.store.pin_record(ALICE)
    assert record is not None and len(record.failures) == 3


def test_timestamp_more_than_five_minutes_ahead_is_3001(lab: Lab, http: PhoneHttp) -> None:
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    answer = post_cert_request(http, alice_ticket(lab, http), "alice@lab.test", ALICE, created=ahead)
    assert isinstance(answer, certprov.CertProvFault) and answer.code == 3001


def test_phone_gets_a_new_ticket_once_after_3001(lab: Lab) -> None:
    real_get = lab.node.tickets.get
    forgotten: list[str] = []

    def forget_first(assertion_id: str, at: datetime):  # type: ignore[no-untyped-def]
        if not forgotten:  # as if the ticket came from a node that has since restarted
            forgotten.append(assertion_id)
            return None
        return real_get(assertion_id, at)

    lab.node.tickets.get = forget_first  # type: ignore[method-assign]
    run = lab.boot()
    assert run.ok, run.diagnosis
    assert [(r.stage.value, r.result, r.code) for r in run.results][3:] == [
        ("WEB_TICKET", "ok", None),
        ("CERT_REQUEST", "failed", "3001"),
        ("WEB_TICKET", "ok", None),
        ("CERT_REQUEST", "ok", None),
        ("CERT_PUBLISH", "ok", None),
        ("REGISTER", "ok", None),
        ("SIGNED_IN", "ok", None),
    ]


def test_rootchain_is_certs_only_pkcs7(lab: Lab) -> None:
    http = PhoneHttp(Resolver({lab.node.cfg.fqdn: "127.0.0.1"}), 5.0)
    url = f"http://{lab.node.cfg.fqdn}:{lab.node.ports.http}/CertProv/CertProvisioningService.svc/rootchain"
    reply = http.request("GET", url, Stage.ROOT_CHAIN)
    http.close()
    assert reply.header("content-type") == pkcs7.CONTENT_TYPE
    served = {c.subject.rfc4514_string() for c in pkcs7.decode_certs_only(reply.body)}
    assert served == {lab.node.ca.issuing.subject.rfc4514_string(), lab.node.ca.root.subject.rfc4514_string()}


def test_a_newline_in_the_path_cannot_forge_a_log_line(lab: Lab) -> None:
    ctx = ssl.create_default_context(cadata=lab.node.ca.root.public_bytes(Encoding.PEM).decode())
    with (
        socket.create_connection(("127.0.0.1", lab.node.ports.https), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=lab.node.cfg.fqdn) as tls,
    ):
        tls.sendall(
            b"GET /x%0a2099-01-01%2000:00:00%20FAKE HTTP/1.1\r\nHost: pool.lab.test\r\nConnection: close\r\n\r\n"
        )
        while tls.recv(4096):
            pass
    lines = [ln for ln in (lab.logs / "requests.log").read_text().splitlines() if not ln.startswith("#")]
    assert not any(ln.startswith("2099-01-01") for ln in lines)
    assert any("/x%0A2099" in ln for ln in lines)


def test_entity_with_spaces_cannot_fake_log_fields(lab: Lab, http: PhoneHttp) -> None:
    body = certprov.build_error(certprov.CertProvCode.BAD_REQUEST, "x")  # any non-request body
    http.request(
        "POST",
        lab.node.certprov_url + "/WebTicket_Proof",
        Stage.CERT_REQUEST,
        body=body + b" result=ok",
        headers={"Content-Type": "text/xml; charset=utf-8"},
    )
    for line in (lab.logs / "provisioning.log").read_text().splitlines():
        assert line.count(" result=") == 1


class _CannedHttp:
    """A stateful fake of the phone's HTTP: canned metadata documents by URL."""

    def __init__(self, pages: dict[str, bytes]) -> None:
        self.pages = pages

    def request(self, method: str, url: str, stage: Stage, **_: object) -> HttpReply:
        return HttpReply(200, {}, self.pages[url])


def test_metadata_pointing_the_pin_at_plain_http_is_refused() -> None:
    base = "https://pool.lab.test/CertProv/CertProvisioningService.svc"
    wt = "http://pool.lab.test/WebTicket/WebTicketService.svc"
    fake = _CannedHttp({base + "/mex": mex.build_certprov_mex(base, wt)})
    with pytest.raises(StageError) as err:
        ticket.find_endpoints(fake, base)  # type: ignore[arg-type]
    assert (err.value.stage, err.value.code) == (Stage.WEB_TICKET, "INSECURE_URL")


def test_configured_plain_http_certprov_is_refused() -> None:
    cfg = DiscoveryConfig(
        certprov_url="http://pool.lab.test/CertProv/CertProvisioningService.svc",
        registrar_fqdn="pool.lab.test",
    )
    with pytest.raises(StageError) as err:
        discover(cfg, SystemClock(), lambda: 1)
    assert (err.value.stage, err.value.code) == (Stage.DHCP_INFORM, "INSECURE_URL")
