"""Contract tests every data-store backend must pass (tools/pool/store/contract.py).

A backend's test module subclasses :class:`StoreContract` and provides three fixtures:

- ``store``: a fresh, empty store;
- ``other_store``: a second, independent handle to the same data (another pool node);
- ``write_blocker``: a zero-argument callable returning a context manager that makes the backend refuse
  writes (after its timeout) while reads keep working, for as long as it is held.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tools.pool.errors import ConfigError, PoolError, StoreUnavailable
from tools.pool.store.contract import PublishedCert, Registration, Store, User

AT = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=30)
LOCK_FOR = timedelta(hours=1)
ALICE = User("sip:alice@lab.test", "tel:+14255551219;ext=1219", "Alice")
BOB = User("sip:bob@lab.test", "tel:+14255551000;ext=1000", "Bob")
Blocker = Callable[[], AbstractContextManager[object]]


def cert(device: str, thumb: str, *, user: User = ALICE, at: datetime = AT) -> PublishedCert:
    return PublishedCert(
        sip_uri=user.sip_uri,
        device_id=device,
        thumbprint=thumb,
        serial="7F" + thumb[:6],
        not_before=at - timedelta(minutes=5),
        not_after=at + timedelta(hours=8),
        published_at=at,
        der=b"\x30\x03\x02\x01" + thumb.encode(),
    )


def fail(store: Store, user: User, at: datetime, local: int = 10, global_: int = 100) -> None:
    store.record_pin_failure(user.sip_uri, at, WINDOW, local, LOCK_FOR, global_)


class StoreContract:
    """Backend-independent behaviour of :class:`tools.pool.store.contract.Store`."""

    @pytest.fixture
    def users(self, store: Store) -> Store:
        store.add_user(ALICE, "hash-a", 5, AT)
        store.add_user(BOB, "hash-b", 4, AT)
        return store

    # -- users ------------------------------------------------------------------------------------------

    def test_user_round_trip_and_key_normalisation(self, users: Store) -> None:
        assert users.get_user("sip:alice@lab.test") == ALICE
        assert users.get_user("SIP:Alice@LAB.test") == ALICE
        assert users.get_user("alice@lab.test") == ALICE
        assert users.get_user("sip:carol@lab.test") is None

    def test_list_users_in_key_order(self, users: Store) -> None:
        assert users.list_users() == [ALICE, BOB]
        carol = User("sip:Carol@lab.test", "tel:+14255551001", "Carol")
        users.add_user(carol, "hash-c", 5, AT)
        assert [u.key for u in users.list_users()] == ["alice@lab.test", "bob@lab.test", "carol@lab.test"]

    def test_add_existing_user_is_refused(self, users: Store) -> None:
        with pytest.raises(PoolError) as err:
            users.add_user(User("sip:ALICE@lab.test", "tel:+1999", "Other"), "h", 5, AT)
        assert err.value.code == "USER_EXISTS"
        assert users.get_user(ALICE.sip_uri) == ALICE

    def test_user_number_and_extension(self) -> None:
        assert (ALICE.number, ALICE.extension) == ("+14255551219", "1219")
        plain = User("sip:x@lab.test", "tel:+1 (425) 555-0100", "X")
        assert (plain.number, plain.extension) == ("+14255550100", "")
        for bad in ("14255551219", "tel:", "tel:+1425x", "tel:+1;ext="):
            with pytest.raises(ConfigError):
                User("sip:x@lab.test", bad, "X")
        with pytest.raises(ConfigError):
            User("alice@lab.test", "tel:+1", "X")

    @pytest.mark.parametrize(
        ("username", "found"),
        [
            ("1219", ["sip:alice@lab.test"]),
            ("+14255551219", ["sip:alice@lab.test"]),
            ("14255551219", ["sip:alice@lab.test"]),
            ("tel:+1 (425) 555-1219", ["sip:alice@lab.test"]),
            ("+1.425.555.1219", ["sip:alice@lab.test"]),
            ("+14255551219;ext=1219", ["sip:alice@lab.test"]),
            ("+14255551219;ext=1000", []),
            ("+1219", []),
            ("555-1219", []),
            ("alice", []),
            ("", []),
            ("12 19", ["sip:alice@lab.test"]),
        ],
    )
    def test_find_users_rules(self, users: Store, username: str, found: list[str]) -> None:
        assert [u.sip_uri for u in users.find_users(username)] == found

    def test_find_users_returns_every_holder_of_a_shared_number(self, users: Store) -> None:
        users.add_user(User("sip:desk@lab.test", "tel:+14255551219;ext=7", "Desk"), "h", 5, AT)
        assert [u.sip_uri for u in users.find_users("+14255551219")] == [
            "sip:alice@lab.test",
            "sip:desk@lab.test",
        ]
        assert [u.sip_uri for u in users.find_users("7")] == ["sip:desk@lab.test"]

    @settings(
        max_examples=60,
        deadline=None,
        # every backend's subclass runs this one @given method: that is the point, not a mistake
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(st.text(max_size=40))
    def test_find_users_never_raises(self, users: Store, username: str) -> None:
        assert all(isinstance(u, User) for u in users.find_users(username))

    # -- PINs -------------------------------------------------------------------------------------------

    def test_pin_record_and_set_pin(self, users: Store) -> None:
        record = users.pin_record("sip:alice@lab.test")
        assert record is not None
        assert (record.pin_hash, record.pin_length, record.set_at) == ("hash-a", 5, AT)
        assert (record.failures, record.locked_until, record.global_failures) == ((), None, 0)
        assert not record.locked_permanently and not record.is_locked(AT)
        later = AT + timedelta(days=2)
        users.set_pin("sip:alice@lab.test", "hash-new", 6, later)
        record = users.pin_record("alice@lab.test")
        assert record is not None
        assert (record.pin_hash, record.pin_length, record.set_at) == ("hash-new", 6, later)
        assert users.pin_record("sip:nobody@lab.test") is None
        with pytest.raises(PoolError) as err:
            users.set_pin("sip:nobody@lab.test", "h", 5, AT)
        assert err.value.code == "NO_SUCH_USER"

    def test_pin_record_repr_hides_the_hash(self, users: Store) -> None:
        assert "hash-a" not in repr(users.pin_record(ALICE.sip_uri))

    def test_failures_prune_window_and_lock_at_local_limit(self, users: Store) -> None:
        for minute in range(3):
            fail(users, ALICE, AT + timedelta(minutes=minute), local=4)
        record = users.pin_record(ALICE.sip_uri)
        assert record is not None and len(record.failures) == 3 and record.locked_until is None
        # Half a minute past the first failure's window: it is pruned, so 3 remain and no lock yet.
        late = AT + WINDOW + timedelta(seconds=30)
        rec = users.record_pin_failure(ALICE.sip_uri, late, WINDOW, 4, LOCK_FOR, 100)
        assert rec.failures == (AT + timedelta(minutes=1), AT + timedelta(minutes=2), late)
        assert rec.locked_until is None and rec.global_failures == 4
        rec = users.record_pin_failure(ALICE.sip_uri, late, WINDOW, 4, LOCK_FOR, 100)
        assert rec.locked_until == late + LOCK_FOR
        assert rec.is_locked(late + LOCK_FOR - timedelta(seconds=1)) and not rec.is_locked(late + LOCK_FOR)
        assert users.pin_record(ALICE.sip_uri) == rec
        bob = users.pin_record(BOB.sip_uri)
        assert bob is not None and bob.global_failures == 0

    def test_global_limit_locks_permanently_until_unlock(self, users: Store) -> None:
        for hour in range(3):
            rec = users.record_pin_failure(ALICE.sip_uri, AT + timedelta(hours=hour), WINDOW, 10, LOCK_FOR, 3)
        assert rec.locked_permanently and rec.global_failures == 3 and rec.locked_until is None
        assert rec.is_locked(AT + timedelta(days=365))
        users.unlock_pin(ALICE.sip_uri)
        rec2 = users.pin_record(ALICE.sip_uri)
        assert rec2 is not None
        assert (rec2.failures, rec2.locked_until, rec2.global_failures, rec2.locked_permanently) == (
            (),
            None,
            0,
            False,
        )

    def test_reset_local_failures_keeps_global_counter(self, users: Store) -> None:
        fail(users, ALICE, AT, local=1)
        users.reset_local_failures("sip:alice@lab.test")
        rec = users.pin_record(ALICE.sip_uri)
        assert rec is not None
        assert (rec.failures, rec.locked_until, rec.global_failures) == ((), None, 1)
        users.reset_local_failures(ALICE.sip_uri)  # nothing to reset: still fine
        for call in (users.reset_local_failures, users.unlock_pin):
            with pytest.raises(PoolError) as err:
                call("sip:nobody@lab.test")
            assert err.value.code == "NO_SUCH_USER"
        with pytest.raises(PoolError):
            fail(users, User("sip:nobody@lab.test", "tel:+1", "N"), AT)

    def test_failures_are_counted_atomically_across_nodes(self, users: Store, other_store: Store) -> None:
        errors: list[BaseException] = []

        def hammer(store: Store, offset: int) -> None:
            try:
                for i in range(5):
                    at = AT + timedelta(seconds=offset * 10 + i)
                    store.record_pin_failure(ALICE.sip_uri, at, WINDOW, 1000, LOCK_FOR, 1000)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=hammer, args=(s, n)) for n, s in enumerate([users, other_store] * 3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        rec = users.pin_record(ALICE.sip_uri)
        assert rec is not None and rec.global_failures == 30 and len(rec.failures) == 30

    # -- certificates -----------------------------------------------------------------------------------

    def test_publish_replaces_same_device_and_keeps_others(self, users: Store) -> None:
        users.publish(cert("{DEV-1}", "A" * 40))
        users.publish(cert("{dev-2}", "B" * 40, at=AT + timedelta(minutes=1)))
        users.publish(cert("{dev-1}", "C" * 40, at=AT + timedelta(minutes=2)))  # device ids ignore case
        assert [c.thumbprint for c in users.certificates("sip:alice@lab.test")] == ["B" * 40, "C" * 40]
        assert users.certificate("A" * 40) is None
        got = users.certificate("c" * 40)
        assert got == cert("{dev-1}", "C" * 40, at=AT + timedelta(minutes=2))
        assert users.certificates(BOB.sip_uri) == []

    def test_publish_same_certificate_again_is_idempotent(self, users: Store) -> None:
        users.publish(cert("{d}", "A" * 40))
        users.publish(cert("{d}", "A" * 40))
        assert len(users.certificates(ALICE.sip_uri)) == 1

    def test_thumbprint_of_another_device_is_refused_and_nothing_changes(self, users: Store) -> None:
        users.publish(cert("{d1}", "A" * 40))
        users.publish(cert("{d2}", "B" * 40))
        before = users.certificates(ALICE.sip_uri)
        with pytest.raises(PoolError) as err:
            users.publish(cert("{d2}", "A" * 40))
        assert err.value.code == "CERT_EXISTS"
        assert users.certificates(ALICE.sip_uri) == before

    def test_publish_for_unknown_user_is_refused(self, users: Store) -> None:
        stranger = User("sip:nobody@lab.test", "tel:+1", "N")
        with pytest.raises(PoolError) as err:
            users.publish(cert("{d}", "A" * 40, user=stranger))
        assert err.value.code == "NO_SUCH_USER"
        assert users.certificate("A" * 40) is None

    def test_revoke(self, users: Store) -> None:
        users.publish(cert("{d}", "A" * 40))
        users.revoke("aa" * 20)
        got = users.certificate("A" * 40)
        assert got is not None and got.revoked
        assert users.certificates(ALICE.sip_uri)[0].revoked
        with pytest.raises(PoolError) as err:
            users.revoke("F" * 40)
        assert err.value.code == "NO_SUCH_CERT"

    def test_as_row_is_json_safe(self, users: Store) -> None:
        users.publish(cert("{d}", "A" * 40))
        got = users.certificate("A" * 40)
        assert got is not None
        row = json.loads(json.dumps(got.as_row()))
        assert row["not_before"] == "2025-03-01T11:55:00Z" and row["published_at"] == "2025-03-01T12:00:00Z"
        assert base64.b64decode(row["der"], validate=True) == got.der
        assert row["revoked"] is False and row["thumbprint"] == "A" * 40

    # -- registrations and credentials ------------------------------------------------------------------

    def test_registrations_refresh_expire_and_unregister(self, users: Store) -> None:
        first = Registration(
            ALICE.sip_uri,
            "<sip:alice@192.0.2.50;transport=tls>",
            "A" * 40,
            "fe1",
            AT,
            AT + timedelta(seconds=600),
        )
        users.register(first)
        users.register(replace(first, expires_at=AT + timedelta(seconds=900)))  # a refresh replaces
        other = replace(
            first, contact="<sip:alice@192.0.2.51;transport=tls>", expires_at=AT + timedelta(seconds=60)
        )
        users.register(other)
        now = users.registrations(ALICE.sip_uri, AT)
        assert [(r.contact, r.expires_at) for r in now] == [
            (first.contact, AT + timedelta(seconds=900)),
            (other.contact, other.expires_at),
        ]
        assert [r.contact for r in users.registrations(ALICE.sip_uri, AT + timedelta(seconds=61))] == [
            first.contact
        ]
        users.unregister(ALICE.sip_uri, first.contact)
        assert users.registrations(ALICE.sip_uri, AT + timedelta(seconds=61)) == []
        assert users.registrations(BOB.sip_uri, AT) == []

    def test_registration_of_unknown_user_is_refused(self, store: Store) -> None:
        with pytest.raises(PoolError):
            store.register(Registration("sip:nobody@lab.test", "<sip:x@y>", "A" * 40, "fe1", AT, AT))

    def test_password_hash(self, users: Store) -> None:
        assert users.password_hash(ALICE.sip_uri) is None
        users.set_password(ALICE.sip_uri, "pbkdf2-x")
        users.set_password(ALICE.sip_uri, "pbkdf2-y")
        assert users.password_hash("SIP:Alice@lab.test") == "pbkdf2-y"
        assert users.password_hash(BOB.sip_uri) is None

    # -- availability -----------------------------------------------------------------------------------

    def test_ping(self, users: Store) -> None:
        users.ping()
        users.ping(write=True)
        assert users.list_users() == [ALICE, BOB]  # the write ping changed nothing

    def test_closed_store_is_unavailable(self, store: Store) -> None:
        store.close()
        calls: list[Callable[[], object]] = [
            store.ping,
            lambda: store.get_user(ALICE.sip_uri),
            lambda: store.add_user(ALICE, "h", 5, AT),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as err:
                call()
            assert err.value.code == "3005" and "\n" not in str(err.value)

    def test_blocked_writes_fail_reads_work_and_nothing_is_half_written(
        self, users: Store, write_blocker: Blocker
    ) -> None:
        users.publish(cert("{d1}", "A" * 40))
        fail(users, BOB, AT)
        before = users.certificates(ALICE.sip_uri)
        with write_blocker():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as err:
                users.publish(cert("{d1}", "B" * 40))
            assert time.monotonic() - started < 10
            assert err.value.code == "3005" and "\n" not in str(err.value)
            assert str(err.value).startswith("3005: data store unavailable: ")
            # Sign-in reads keep working, and so does a success that has nothing to reset.
            assert users.get_user(ALICE.sip_uri) == ALICE
            assert [u.sip_uri for u in users.find_users("1219")] == [ALICE.sip_uri]
            users.reset_local_failures(ALICE.sip_uri)
            users.ping()
            writes: list[Callable[[], object]] = [
                lambda: users.ping(write=True),  # what /metrics asks: a store that cannot write is down
                lambda: users.revoke("A" * 40),
                lambda: fail(users, ALICE, AT),
                lambda: users.reset_local_failures(BOB.sip_uri),
            ]
            for write in writes:
                with pytest.raises(StoreUnavailable):
                    write()
            assert users.certificates(ALICE.sip_uri) == before
        assert users.certificates(ALICE.sip_uri) == before
        rec = users.pin_record(ALICE.sip_uri)
        assert rec is not None and rec.global_failures == 0
        users.publish(cert("{d1}", "B" * 40))
        assert [c.thumbprint for c in users.certificates(ALICE.sip_uri)] == ["B" * 40]
