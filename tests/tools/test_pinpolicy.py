"""PIN policy, PIN hashing and PIN sign-in (protocol.md §6.3, §12) against a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.stages import Stage
from agent.wire.ticketfault import TicketFaultCode
from tools.pool.errors import ConfigError, PoolError, StoreUnavailable
from tools.pool.pinpolicy import PinAuthError, PinPolicy, authenticate, hash_pin, verify_pin
from tools.pool.store import SqliteStore, StoreBlocker, User

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PIN = "80469"  # distinctive: appears in no URI, number or timestamp below
SHORT_PIN = "7302"
FAST = 1000  # PBKDF2 iterations for tests; the default stays 100_000
ALICE = User("sip:alice@lab.test", "tel:+14255551219;ext=1219", "Alice")
BOB = User("sip:bob@lab.test", "tel:+14255552000;ext=2000", "Bob")
POLICY = PinPolicy()


class Pool:
    """A store plus the errors seen, so every test also checks that no message leaks a PIN."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = SqliteStore(path, timeout_s=0.2)
        self.errors: list[PinAuthError] = []

    def add(self, user: User, pin: str = PIN) -> None:
        self.store.add_user(user, hash_pin(pin, iterations=FAST), len(pin), AT)

    def auth(
        self,
        username: str,
        pin: str = PIN,
        *,
        claims: str | None = None,
        at: datetime = AT,
        policy: PinPolicy = POLICY,
    ) -> User:
        try:
            return authenticate(self.store, policy, username, pin, claims, at)
        except PinAuthError as exc:
            self.errors.append(exc)
            raise

    def refused(self, code: TicketFaultCode, username: str, pin: str = PIN, **kw: object) -> PinAuthError:
        with pytest.raises(PinAuthError) as err:
            self.auth(username, pin, **kw)  # type: ignore[arg-type]
        assert (err.value.code, err.value.reason) == (str(int(code)), code.reason_name)
        assert err.value.stage is Stage.WEB_TICKET
        return err.value


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    lab = Pool(tmp_path / "pool.sqlite")
    lab.add(ALICE)
    lab.add(BOB, SHORT_PIN)
    yield lab
    for exc in lab.errors:
        for text in (str(exc), repr(exc), exc.detail, repr(exc.args)):
            assert PIN not in text and SHORT_PIN not in text
    lab.store.close()


# -- policy ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_length": 3},
        {"min_length": 25},
        {"lifetime_days": -1},
        {"lifetime_days": 1000},
        {"max_logon_attempts": 0},
        {"max_logon_attempts": 1000},
        {"window": timedelta(0)},
        {"lock_for": timedelta(seconds=-1)},
    ],
)
def test_policy_ranges(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PinPolicy(**kwargs)  # type: ignore[arg-type]


def test_limits_by_pin_length_and_override() -> None:
    assert [POLICY.limits(n) for n in (4, 5, 6, 12)] == [(10, 100), (25, 1000), (25, 5000), (25, 5000)]
    assert PinPolicy(max_logon_attempts=3).limits(4) == (3, 100)


@pytest.mark.parametrize(
    ("pin", "why"),
    [
        ("12a45", "digits"),
        ("١٢٣٤٥", "digits"),  # Arabic-Indic digits are str.isdigit() but not PIN digits
        ("", "digits"),
        ("2580", "shorter than the minimum of 5"),
        ("77777", "repeats"),
        ("91234", "consecutive"),
        ("98761", "consecutive"),
        ("14255551219", "phone number"),
        ("4255551219", None),  # equal means equal: the national part alone is allowed
        ("01219", None),
        ("12190", None),
        ("13579", None),
        ("12350", None),
    ],
)
def test_check_new_pin(pin: str, why: str | None) -> None:
    if why is None:
        POLICY.check_new_pin(pin, ALICE.number, ALICE.extension)
        return
    with pytest.raises(PoolError) as err:
        POLICY.check_new_pin(pin, ALICE.number, ALICE.extension)
    assert err.value.code == "PIN_POLICY" and why in err.value.detail
    assert not pin or pin not in str(err.value)


def test_pin_equal_to_extension_and_common_patterns_allowed() -> None:
    policy = PinPolicy(min_length=4)
    with pytest.raises(PoolError, match="extension"):
        policy.check_new_pin("1219", ALICE.number, ALICE.extension)
    allowing = PinPolicy(min_length=4, allow_common_patterns=True)
    for pin in ("1219", "1111", "1234"):
        allowing.check_new_pin(pin, ALICE.number, ALICE.extension)
    with pytest.raises(PoolError, match="shorter"):
        allowing.check_new_pin("123", ALICE.number, ALICE.extension)


# -- hashing -----------------------------------------------------------------------------------------------


def test_hash_format_and_round_trip() -> None:
    encoded = hash_pin(PIN)
    scheme, iterations, _, _ = encoded.split("$")
    assert (scheme, iterations) == ("pbkdf2_sha256", "100000") and PIN not in encoded
    assert verify_pin(PIN, encoded) and not verify_pin("80468", encoded)
    fast = hash_pin(PIN, iterations=FAST)
    assert fast != hash_pin(PIN, iterations=FAST)  # random salt
    assert hash_pin(PIN, salt=b"s" * 16, iterations=FAST) == hash_pin(PIN, salt=b"s" * 16, iterations=FAST)


@pytest.mark.parametrize(
    "encoded", ["", "pbkdf2_sha256$x$AA==$AA==", "md5$1000$AA==$AA==", "pbkdf2_sha256$0$AA==$AA==", "a$b$c"]
)
def test_corrupt_hash_is_internal_error(encoded: str) -> None:
    with pytest.raises(PinAuthError) as err:
        verify_pin(PIN, encoded)
    assert err.value.code == "2099" and PIN not in str(err.value)


@given(st.text(max_size=12), st.text(max_size=60))
def test_verify_pin_only_returns_bool_or_raises_internal(pin: str, encoded: str) -> None:
    try:
        assert verify_pin(pin, encoded) in (True, False)
    except PinAuthError as exc:
        assert exc.reason == "Internal"


# -- authenticate: §6.3 in order ---------------------------------------------------------------------------


def test_success_by_number_extension_and_claim(pool: Pool) -> None:
    assert pool.auth("+14255551219") == ALICE
    assert pool.auth("1219", claims="SIP:Alice@LAB.test") == ALICE
    assert pool.auth("tel:+1 425 555 2000", SHORT_PIN, claims="bob@lab.test") == BOB


def test_unknown_number_and_wrong_pin_are_pin_invalid(pool: Pool) -> None:
    pool.refused(TicketFaultCode.PIN_INVALID, "9999")
    pool.refused(TicketFaultCode.PIN_INVALID, "1219", "11111")
    record = pool.store.pin_record(ALICE.sip_uri)
    assert record is not None and len(record.failures) == 1 and record.global_failures == 1


def test_four_digit_pin_locks_on_the_tenth_failure_and_unlocks_after_lock_for(pool: Pool) -> None:
    for n in range(9):
        pool.refused(TicketFaultCode.PIN_INVALID, "2000", "0000", at=AT + timedelta(seconds=n))
    assert pool.auth("2000", SHORT_PIN, at=AT + timedelta(seconds=9)) == BOB  # resets the window
    for n in range(10):
        pool.refused(TicketFaultCode.PIN_INVALID, "2000", "0000", at=AT + timedelta(seconds=10 + n))
    tenth = AT + timedelta(seconds=19)
    pool.refused(TicketFaultCode.PIN_LOCKED, "2000", SHORT_PIN, at=tenth + timedelta(seconds=1))
    pool.refused(
        TicketFaultCode.PIN_LOCKED, "2000", SHORT_PIN, at=tenth + POLICY.lock_for - timedelta(seconds=1)
    )
    assert pool.auth("2000", SHORT_PIN, at=tenth + POLICY.lock_for) == BOB
    record = pool.store.pin_record(BOB.sip_uri)
    assert record is not None and record.failures == () and record.locked_until is None
    assert record.global_failures == 19  # the global counter survives success


def test_maximum_logon_attempts_overrides_local_limit(pool: Pool) -> None:
    policy = PinPolicy(max_logon_attempts=2)
    pool.refused(TicketFaultCode.PIN_INVALID, "1219", "11111", policy=policy)
    pool.refused(TicketFaultCode.PIN_INVALID, "1219", "11111", policy=policy)
    pool.refused(TicketFaultCode.PIN_LOCKED, "1219", policy=policy)


def test_global_limit_locks_until_admin_unlock(pool: Pool) -> None:
    policy = PinPolicy(max_logon_attempts=999)  # local limit out of the way; 4-digit global limit is 100
    for n in range(100):
        pool.refused(TicketFaultCode.PIN_INVALID, "2000", "0000", at=AT + timedelta(seconds=n), policy=policy)
    years = AT + timedelta(days=400)
    pool.refused(TicketFaultCode.PIN_LOCKED, "2000", SHORT_PIN, at=years, policy=policy)
    pool.store.unlock_pin(BOB.sip_uri)
    assert pool.auth("2000", SHORT_PIN, at=years, policy=policy) == BOB


def test_failure_counted_on_every_unlocked_candidate(pool: Pool) -> None:
    desk = User("sip:desk@lab.test", "tel:+14255551219;ext=7", "Desk")
    pool.add(desk, "55012")
    pool.refused(TicketFaultCode.PIN_INVALID, "+14255551219", "11111")
    counts = [pool.store.pin_record(u.sip_uri) for u in (ALICE, desk, BOB)]
    assert [r.global_failures if r else None for r in counts] == [1, 1, 0]
    assert pool.auth("+14255551219", "55012") == desk  # the PIN picks among the number's users


def test_locked_candidates_are_skipped_and_not_counted(pool: Pool) -> None:
    desk = User("sip:desk@lab.test", "tel:+14255551219;ext=7", "Desk")
    pool.add(desk, "55012")
    pool.store.record_pin_failure(desk.sip_uri, AT, POLICY.window, 1, POLICY.lock_for, 1000)
    assert pool.auth("+14255551219") == ALICE
    pool.refused(TicketFaultCode.PIN_INVALID, "+14255551219", "11111")
    desk_record = pool.store.pin_record(desk.sip_uri)
    assert desk_record is not None and desk_record.global_failures == 1


def test_same_pin_on_a_shared_number_is_ambiguous_unless_the_line_decides(pool: Pool) -> None:
    desk = User("sip:desk@lab.test", "tel:+14255551219;ext=7", "Desk")
    pool.add(desk)
    pool.refused(TicketFaultCode.PHONE_AMBIGUOUS, "+14255551219")
    assert pool.auth("+14255551219;ext=7") == desk
    assert pool.auth("7") == desk
    lobby = User("sip:lobby@lab.test", "tel:+14255551219", "Lobby")  # the number itself, no extension
    pool.add(lobby)
    assert pool.auth("+14255551219") == lobby
    record = pool.store.pin_record(ALICE.sip_uri)
    assert record is not None and record.global_failures == 0  # ambiguity is no PIN failure


def test_expired_pin_comes_before_disabled(pool: Pool) -> None:
    policy = PinPolicy(lifetime_days=30)
    assert pool.auth("1219", at=AT + timedelta(days=29), policy=policy) == ALICE
    off = User("sip:off@lab.test", "tel:+14255553000;ext=3000", "Off", enabled=False)
    pool.add(off)
    pool.refused(TicketFaultCode.PIN_EXPIRED, "3000", at=AT + timedelta(days=30), policy=policy)
    pool.refused(TicketFaultCode.PIN_AUTH_DISABLED, "3000", at=AT + timedelta(days=29), policy=policy)


def test_pin_auth_disabled(pool: Pool) -> None:
    pool.add(User("sip:nopin@lab.test", "tel:+14255554000;ext=4000", "No PIN", pin_auth_enabled=False))
    pool.refused(TicketFaultCode.PIN_AUTH_DISABLED, "4000")


def test_claim_mismatch_is_checked_last(pool: Pool) -> None:
    err = pool.refused(TicketFaultCode.CLAIM_MISMATCH, "1219", claims="sip:bob@lab.test")
    assert "alice" not in err.detail  # do not tell a stranger whose PIN it was
    pool.refused(TicketFaultCode.PIN_INVALID, "1219", "11111", claims="sip:bob@lab.test")


def test_sign_in_works_while_store_writes_are_blocked(pool: Pool) -> None:
    with StoreBlocker(pool.path):
        assert pool.auth("1219") == ALICE
        with pytest.raises(StoreUnavailable):
            pool.auth("1219", "11111")
