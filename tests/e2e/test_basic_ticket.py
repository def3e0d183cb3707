"""The Web Ticket service's Basic ("WinNegotiate") endpoint: the credential path of Test-CsClientAuth."""

from __future__ import annotations

import pytest

from agent import ticket
from agent.net import PhoneHttp
from agent.stages import StageError
from tests.e2e.conftest import ALICE, BOB, Lab
from tools.pool.pinpolicy import hash_pin

pytestmark = pytest.mark.timeout(60)
PASSWORD = "correct horse battery staple"


def test_basic_credential_gets_a_ticket_for_that_user(lab: Lab, http: PhoneHttp) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    endpoints = ticket.find_endpoints(http, lab.node.certprov_url)
    held = ticket.request_ticket_basic(http, endpoints, "alice@lab.test", PASSWORD)
    assert held.sip_uri == ALICE and len(held.proof_key) == 32


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice@lab.test", "wrong"), ("nobody@lab.test", PASSWORD), ("bob@lab.test", PASSWORD)],
)
def test_wrong_credentials_are_refused(lab: Lab, http: PhoneHttp, user: str, password: str) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    endpoints = ticket.find_endpoints(http, lab.node.certprov_url)
    with pytest.raises(StageError) as err:
        ticket.request_ticket_basic(http, endpoints, user, password)
    assert err.value.code == "CREDENTIAL"
    log = (lab.logs / "provisioning.log").read_text()
    assert PASSWORD not in log and ("unknown user" in log or "wrong or no lab password" in log)


def test_claim_for_another_user_is_2006(lab: Lab, http: PhoneHttp) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    endpoints = ticket.find_endpoints(http, lab.node.certprov_url)
    with pytest.raises(StageError) as err:
        ticket.request_ticket_basic(http, endpoints, "alice@lab.test", PASSWORD, claims_uri=BOB)
    assert err.value.code == "2006"


def test_password_guessing_hits_the_same_lockout_as_pins(lab: Lab, http: PhoneHttp) -> None:
    lab.node.store.set_password(ALICE, hash_pin(PASSWORD))
    endpoints = ticket.find_endpoints(http, lab.node.certprov_url)
    for _ in range(3):  # PinPolicy(max_logon_attempts=3)
        with pytest.raises(StageError) as err:
            ticket.request_ticket_basic(http, endpoints, "alice@lab.test", "guess")
        assert err.value.code == "CREDENTIAL"
    with pytest.raises(StageError) as err:
        ticket.request_ticket_basic(http, endpoints, "alice@lab.test", PASSWORD)
    assert err.value.code == "2002"
    assert not lab.boot().ok  # and the PIN door is locked too
