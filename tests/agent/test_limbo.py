"""x509-limbo conformance of :meth:`agent.truststore.TrustStore.verify_server`.

Every SERVER case of the regenerated suite and of the captured online chains runs through the phone's trust
store (intermediate cap lifted to the suite's largest offer, chain depth from the case or the phone's
default). Cases needing something the phone does not do are skipped with the reason; where the result differs
from limbo's expectation the case must be listed in ``EXPECTED_DIVERGENCES``, so any change of behaviour in
``cryptography`` or in the trust store makes this file fail.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent.stages import StageError
from agent.truststore import TrustStore

LIMBO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "x509-limbo"
SUITE = LIMBO_DIR / "limbo-regenerated-no-bettertls.json"
ONLINE = sorted((LIMBO_DIR / "online").glob("*.limbo.json"))

# Certificates in the suite are valid 1970-2969 when a case gives no validation time.
DEFAULT_TIME = datetime(2024, 1, 1, tzinfo=UTC)
INTERMEDIATE_CAP = 1000

UNIMPLEMENTED_FEATURES = {
    "has-crl": "the phone does no revocation checking (no CRL/OCSP in protocol.md §5)",
    "has-policy-constraints": "certificate policies are not processed by cryptography's verifier",
    "name-constraint-dn": "directoryName name constraints are not implemented by cryptography",
    "pedantic-public-suffix-wildcard": "no public-suffix list on the phone",
    "pedantic-webpki-eku": "CABF EKU pedantry beyond serverAuth is not checked",
    "pedantic-webpki-subscriber-key": "CABF subscriber-key pedantry is not checked",
    "pedantic-serial-number": "serial-number pedantry is not checked",
    "pedantic-rfc5280": "strict RFC 5280 pedantry is not checked",
    "rfc5280-incompatible-with-webpki": "the phone follows Web PKI where it conflicts with RFC 5280",
}

# id → why the phone's answer differs from limbo's expectation. Each is cryptography 50.0.2's own verdict
# (the trust store adds no check of its own), found by running the raw PolicyBuilder on the same case.
_CN_NOT_CHECKED = "cryptography matches names against the SAN only and never inspects the subject CN"
_CA_LEAF = "cryptography refuses a CA certificate (cA=TRUE) as the leaf"
_SELF_ISSUED = "cryptography builds no path through self-issued intermediates"
_ROOT_AKI = "cryptography relaxes AKI checks on trust anchors to what RFC 5280 allows (since 44.0)"
EXPECTED_DIVERGENCES: dict[str, str] = {
    "pathlen::validation-ignores-pathlen-in-leaf": _CA_LEAF,
    "rfc5280::ca-as-leaf": _CA_LEAF,
    "pathlen::self-issued-certs-pathlen": _SELF_ISSUED,
    "pathlen::max-chain-depth-1-self-issued": _SELF_ISSUED,
    "rfc5280::aki::intermediate-missing-aki": "cryptography requires an AKI on the leaf only",
    "rfc5280::ski::root-missing-ski": "cryptography does not require an SKI on CA certificates",
    "rfc5280::ski::intermediate-missing-ski": "cryptography does not require an SKI on CA certificates",
    "webpki::aki::root-with-aki-authoritycertissuer": _ROOT_AKI,
    "webpki::aki::root-with-aki-authoritycertserialnumber": _ROOT_AKI,
    "webpki::aki::root-with-aki-all-fields": _ROOT_AKI,
    "webpki::aki::root-with-aki-ski-mismatch": _ROOT_AKI,
    "webpki::cn::ipv4-hex-mismatch": _CN_NOT_CHECKED,
    "webpki::cn::ipv4-leading-zeros-mismatch": _CN_NOT_CHECKED,
    "webpki::cn::ipv6-uppercase-mismatch": _CN_NOT_CHECKED,
    "webpki::cn::ipv6-uncompressed-mismatch": _CN_NOT_CHECKED,
    "webpki::cn::ipv6-non-rfc5952-mismatch": _CN_NOT_CHECKED,
    "webpki::cn::punycode-not-in-san": _CN_NOT_CHECKED,
    "webpki::cn::utf8-vs-punycode-mismatch": _CN_NOT_CHECKED,
    "webpki::cn::not-in-san": _CN_NOT_CHECKED,
    "webpki::cn::case-mismatch": _CN_NOT_CHECKED,
    "webpki::forbidden-rsa-not-divisible-by-8-in-root": "cryptography: no RSA size-multiple-of-8 check",
}


def _cases() -> list[dict[str, Any]]:
    if not SUITE.is_file():
        return []
    cases: list[dict[str, Any]] = json.loads(SUITE.read_text())["testcases"]
    cases.extend(json.loads(path.read_text()) for path in ONLINE)
    return cases


CASES = _cases()

# A few limbo certificates carry a zero serial on purpose; cryptography warns on loading them.
pytestmark = pytest.mark.filterwarnings("ignore:Parsed a serial number which wasn't positive")


def _skip_reason(case: dict[str, Any]) -> str | None:
    if case["validation_kind"] != "SERVER":
        return "CLIENT case: limbo checks client peer names; the phone checks only its own chain"
    for feature in case["features"]:
        if feature in UNIMPLEMENTED_FEATURES:
            return f"{feature}: {UNIMPLEMENTED_FEATURES[feature]}"
    return None


def _verdict(case: dict[str, Any]) -> tuple[str, str]:
    """("SUCCESS"|"FAILURE", detail) of the phone's trust store on one case."""
    anchors = [x509.load_pem_x509_certificate(pem.encode()) for pem in case["trusted_certs"]]
    pool = [x509.load_pem_x509_certificate(pem.encode()) for pem in case["untrusted_intermediates"]]
    leaf = x509.load_pem_x509_certificate(case["peer_certificate"].encode())
    at = datetime.fromisoformat(case["validation_time"]) if case["validation_time"] else DEFAULT_TIME
    depth = {} if case["max_chain_depth"] is None else {"max_chain_depth": case["max_chain_depth"]}
    try:
        store = TrustStore(anchors, max_intermediates=INTERMEDIATE_CAP, **depth)
        chain = store.verify_server(leaf, pool, case["expected_peer_name"]["value"], at)
    except StageError as exc:
        return "FAILURE", str(exc)
    assert chain.leaf == leaf
    assert chain.anchor in anchors
    return "SUCCESS", "verified"


@pytest.mark.skipif(not CASES, reason=f"x509-limbo vectors not found under {LIMBO_DIR}")
@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_limbo_case(case: dict[str, Any]) -> None:
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    verdict, detail = _verdict(case)
    if case["id"] in EXPECTED_DIVERGENCES:
        assert verdict != case["expected_result"], f"now agrees with limbo; drop the divergence ({detail})"
    else:
        assert verdict == case["expected_result"], detail


@pytest.mark.skipif(not CASES, reason=f"x509-limbo vectors not found under {LIMBO_DIR}")
def test_divergences_name_runnable_cases() -> None:
    runnable = {case["id"] for case in CASES if _skip_reason(case) is None}
    assert set(EXPECTED_DIVERGENCES) <= runnable
