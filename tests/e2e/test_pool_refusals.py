"""The pool refuses what it must (forged/expired tickets, another user's entity, bad input) and keeps serving."""

from __future__ import annotations

import socket
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from agent import enroll
from agent.net import PhoneHttp, Resolver
from agent.stages import Stage, StageError
from agent.wire import certprov
from tests.e2e.conftest import ALICE, BOB, Lab, alice_ticket, post_cert_request

pytestmark = pytest.mark.timeout(60)
CERTPROV_XML = {
    "Content-Type": "text/xml; charset=utf-8",
    "SOAPAction": f'"{certprov.GET_AND_PUBLISH_ACTION}"',
}


def csr() -> bytes:
    return enroll.build_csr(enroll.generate_key(2048), ALICE)


def test_forged_proof_key_is_3001(lab: Lab, http: PhoneHttp) -> None:
    forged = replace(alice_ticket(lab, http), proof_key=bytes(32))
    with pytest.raises(enroll.TicketRejected) as err:
        enroll.get_and_publish(http, forged, csr(), "{00000000-0000-0000-0000-000000000001}")
    assert err.value.code == "3001"


def test_expired_ticket_is_3001(lab: Lab, http: PhoneHttp) -> None:
    held = alice_ticket(lab, http)
    lab.clock.shift = timedelta(hours=9)  # the pool's clock: past the 8 h ticket lifetime
    with pytest.raises(enroll.TicketRejected):
        enroll.get_and_publish(http, held, csr(), "{00000000-0000-0000-0000-000000000002}")


def test_unknown_assertion_is_3001(lab: Lab, http: PhoneHttp) -> None:
    held = alice_ticket(lab, http)
    other = replace(held.saml, assertion_id=f"SamlSecurityToken-{uuid.uuid4()}")
    with pytest.raises(enroll.TicketRejected):
        enroll.get_and_publish(
            http, replace(held, saml=other), csr(), "{00000000-0000-0000-0000-000000000003}"
        )


def test_entity_of_another_user_is_3002_and_nothing_is_signed(lab: Lab, http: PhoneHttp) -> None:
    before = len(lab.node.store.certificates(ALICE))
    answer = post_cert_request(http, alice_ticket(lab, http), "bob@lab.test", BOB)
    assert isinstance(answer, certprov.CertProvFault) and answer.code == 3002
    assert lab.node.store.certificates(BOB) == []
    assert len(lab.node.store.certificates(ALICE)) == before


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>',
    ],
)
def test_malformed_soap_gets_an_error_and_the_pool_keeps_serving(
    lab: Lab, http: PhoneHttp, body: bytes
) -> None:
    url = lab.node.certprov_url + "/WebTicket_Proof"
    reply = http.request("POST", url, Stage.CERT_REQUEST, body=body, headers=CERTPROV_XML)
    answer = certprov.parse_response(reply.body)
    assert isinstance(answer, certprov.CertProvFault) and answer.code == 3003
    pin = lab.node.base_url + "/WebTicket/WebTicketService.svc/Pin"
    assert http.request("POST", pin, Stage.WEB_TICKET, body=body, headers=CERTPROV_XML).status == 500
    assert lab.boot().ok  # still serving


def test_oversized_body_is_413(lab: Lab, http: PhoneHttp) -> None:
    url = lab.node.certprov_url + "/WebTicket_Proof"
    reply = http.request("POST", url, Stage.CERT_REQUEST, body=b"x" * (300 * 1024), headers=CERTPROV_XML)
    assert reply.status == 413


def test_unknown_path_is_404(lab: Lab, http: PhoneHttp) -> None:
    assert http.request("GET", lab.node.base_url + "/nope", Stage.WEB_TICKET).status == 404


def test_garbage_datagrams_do_not_stop_dhcp_or_sntp(lab: Lab) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in (lab.node.ports.dhcp, lab.node.ports.sntp):
            for junk in (b"", b"\x01", b"\x01\x01\x06\x00" + bytes(300), bytes(range(256))):
                s.sendto(junk, ("127.0.0.1", port))
    assert lab.boot().ok


def test_phone_refuses_plain_http_trust_bypass(lab: Lab) -> None:
    """HTTPS without an established trust context is refused, never silently unverified."""
    client = PhoneHttp(Resolver({lab.node.cfg.fqdn: "127.0.0.1"}), 5.0, None)
    try:
        with pytest.raises(StageError) as err:
            client.request("GET", lab.node.certprov_url + "/mex", Stage.WEB_TICKET)
        assert err.value.code == "TLS"
    finally:
        client.close()
