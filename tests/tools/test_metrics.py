"""/metrics and the admin log endpoint of a real node on loopback (real TLS, real phones, a real store)."""

from __future__ import annotations

import collections
import http.client
import logging
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import ALICE, BOB_PIN, Lab, start_lab
from tools.pool.admin import AdminRequestError, LogQuery, parse_query
from tools.pool.config import AdminConfig
from tools.pool.errors import ConfigError
from tools.pool.metrics import DataStoreHealth
from tools.pool.node import PoolNode
from tools.pool.provlog import parse_line, user_key
from tools.pool.store import store_blocker

pytestmark = pytest.mark.timeout(60)
CHECK_S = 0.3
BOB_NUMBER = "+14255550124"


class _Conn(http.client.HTTPSConnection):
    """To 127.0.0.1, checking the certificate for the pool's name with the pool's root only."""

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock = self._ctx.wrap_socket(raw, server_hostname=self.host)

    def __init__(self, node: PoolNode) -> None:
        self._ctx = ssl.create_default_context(cafile=str(node.cfg.ca_root_file))
        super().__init__(node.cfg.fqdn, node.ports.admin, context=self._ctx, timeout=5)


def admin_get(
    node: PoolNode, target: str, token: str | None = None, method: str = "GET"
) -> tuple[int, http.client.HTTPResponse, str]:
    conn = _Conn(node)
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        conn.request(method, target, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply, reply.read().decode()
    finally:
        conn.close()


def token_of(node: PoolNode) -> str:
    return node.cfg.admin_token_file.read_text().strip()


def metric(pool_node: PoolNode, name: str, **labels: str) -> float:
    """One sample of a scrape of /metrics (0 when absent)."""
    status, _, text = admin_get(pool_node, "/metrics")
    assert status == 200
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = start_lab(tmp_path, admin=AdminConfig(datastore_check_s=CHECK_S))
    try:
        yield lab
    finally:
        lab.node.stop()


def test_a_sign_in_is_counted_by_stage_and_code_like_the_log(lab: Lab) -> None:
    assert lab.boot().ok
    node = lab.node
    assert metric(node, "phoneprov_requests_total", stage="WEB_TICKET", result="ok", code="-") == 1
    assert metric(node, "phoneprov_requests_total", stage="CERT_PUBLISH", result="ok", code="-") == 1
    assert metric(node, "phoneprov_requests_total", node="fe1", stage="REGISTER", code="200") == 1
    assert metric(node, "phoneprov_registrations_total", result="ok", code="200") == 1
    assert metric(node, "phoneprov_certificate_issue_seconds_count", node="fe1") == 1
    assert 0 < metric(node, "phoneprov_certificate_issue_seconds_sum") < 5
    assert metric(node, "phoneprov_datastore_up", node="fe1") == 1
    logged = collections.Counter(
        (ln.stage, ln.result, ln.code)
        for ln in map(parse_line, (lab.logs / "provisioning.log").read_text().splitlines())
    )
    for (stage, result, code), count in logged.items():
        assert metric(node, "phoneprov_requests_total", stage=stage, result=result, code=code) == count


def _wait_for(node: PoolNode, value: float, within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while (seen := metric(node, "phoneprov_datastore_up")) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def test_a_blocked_store_shows_3005_and_datastore_down_until_released(lab: Lab) -> None:
    node = lab.node
    assert metric(node, "phoneprov_datastore_up") == 1
    with store_blocker(node.cfg.store):
        run = lab.boot()
        assert {r.stage.value: r.code for r in run.results}["CERT_PUBLISH"] == "3005"
        assert metric(node, "phoneprov_requests_total", stage="CERT_PUBLISH", code="3005") == 1
        assert metric(node, "phoneprov_datastore_up") == 0  # at once: the 3005 line said so
        time.sleep(CHECK_S)
        assert metric(node, "phoneprov_datastore_up") == 0  # and the store's own check agrees (a write)
    assert _wait_for(node, 1, CHECK_S + 2 * node.cfg.store_timeout_s + 1) == 1
    assert metric(node, "phoneprov_certificate_issue_seconds_count") == 0  # nothing was published


def test_scrapes_never_pile_up_on_a_hung_store() -> None:
    release, calls = threading.Event(), []

    def hung_probe() -> None:
        calls.append(1)
        release.wait(5)

    health = DataStoreHealth(hung_probe, wait_s=0.1, check_s=60)
    answers: list[bool] = []
    scrapes = [threading.Thread(target=lambda: answers.append(health.up())) for _ in range(20)]
    for t in scrapes:
        t.start()
    for t in scrapes:
        t.join(5)
    assert answers == [False] * 20 and len(calls) == 1  # one check in flight; a silent store is down
    release.set()
    deadline = time.monotonic() + 2
    while not health.up() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert health.up() and len(calls) == 1  # the answer is cached for check_s


def test_the_log_endpoint_wants_the_token_and_a_good_query(lab: Lab) -> None:
    node, token = lab.node, token_of(lab.node)
    status, reply, body = admin_get(node, "/admin/logs/provisioning")
    assert status == 401 and reply.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert admin_get(node, "/admin/logs/provisioning", token[:-1] + "x")[0] == 401
    assert admin_get(node, "/admin/logs/provisioning", "x" * 2000)[0] == 401
    assert admin_get(node, "/admin/logs/provisioning", token)[0] == 200
    for query, why in [
        ("since=yesterday", "not an ISO 8601 time"),
        ("since=2024-05-01T12:00:00", "needs a UTC offset"),
        ("color=red", "unknown parameter"),
        ("user=a&user=b", "once"),
        ("user=sip:", "SIP URI"),
    ]:
        status, _, body = admin_get(node, f"/admin/logs/provisioning?{query}", token)
        assert status == 400 and why in body and body.count("\n") == 1, (query, body)
    assert admin_get(node, "/admin/logs/provisioning", token, method="POST")[0] == 405
    assert admin_get(node, "/admin/nope", token)[0] == 404
    assert admin_get(node, "/metrics")[0] == 200  # scraping needs no secret (no identities in metrics)
    assert token not in (lab.logs / "requests.log").read_text()


def test_since_and_user_select_lines(lab: Lab) -> None:
    node, token = lab.node, token_of(lab.node)
    assert lab.boot().ok
    middle = lab.clock.now()
    assert lab.boot(lab.phone_config(username=BOB_NUMBER, pin=BOB_PIN)).ok
    _, _, everything = admin_get(node, "/admin/logs/provisioning", token)
    assert everything == (lab.logs / "provisioning.log").read_text()
    since = middle.isoformat().replace("+00:00", "Z")
    _, _, later = admin_get(node, f"/admin/logs/provisioning?since={since}", token)
    assert later and all(parse_line(ln).time >= middle for ln in later.splitlines())
    assert {user_key(parse_line(ln).user) for ln in later.splitlines()} == {"bob@lab.test"}
    _, _, alice = admin_get(node, "/admin/logs/provisioning?user=ALICE%40lab.test", token)
    assert {user_key(parse_line(ln).user) for ln in alice.splitlines()} == {user_key(ALICE)}
    stages = {parse_line(ln).stage for ln in alice.splitlines()}
    assert stages == {"WEB_TICKET", "CERT_PUBLISH", "REGISTER"}


def test_the_generated_token_is_private_kept_and_never_logged(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, path, token = lab.node.cfg, lab.node.cfg.admin_token_file, token_of(lab.node)
    assert path == cfg.state_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) >= 32
    lab.node.stop()
    caplog.set_level(logging.DEBUG)
    with PoolNode(cfg) as again:  # a restart keeps the token
        assert token_of(again) == token
        assert admin_get(again, "/admin/logs/provisioning", token)[0] == 200
    assert "admin token created" not in caplog.text
    path.unlink()
    with PoolNode(cfg) as fresh:
        new_token = token_of(fresh)
    assert new_token != token and f"admin token created in {path}" in caplog.text
    assert new_token not in caplog.text and token not in caplog.text
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        PoolNode(cfg).start()


def test_a_configured_token_file_is_used_and_must_exist(tmp_path: Path) -> None:
    token_file = tmp_path / "shared.token"
    shared = AdminConfig(token_file=token_file)
    with pytest.raises(ConfigError, match="does not exist"):
        start_lab(tmp_path / "a", admin=shared)
    token_file.write_text("s3cret-token-for-the-whole-pool\n")
    token_file.chmod(0o600)
    lab = start_lab(tmp_path / "b", admin=shared)
    try:
        assert admin_get(lab.node, "/admin/logs/provisioning", "s3cret-token-for-the-whole-pool")[0] == 200
        assert not (lab.node.cfg.state_dir / "admin.token").exists()
    finally:
        lab.node.stop()


def test_query_parsing_is_strict_but_forgives_an_unencoded_plus() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert parse_query("since=2024-05-01T12:00:00+02:00").since == datetime(2024, 5, 1, 12, tzinfo=plus2)
    assert parse_query("since=2024-05-01T10:00:00Z&user=sip:bob@lab.test") == LogQuery(
        datetime(2024, 5, 1, 10, tzinfo=UTC), "sip:bob@lab.test"
    )
    assert parse_query("") == LogQuery()
    for bad in ("since=2024-05-01T12:00:00 x", "a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9", "user=%20"):
        with pytest.raises(AdminRequestError):
            parse_query(bad)
