"""Provisioning users into a store: the PIN is checked against the pool's PIN policy and only its hash kept."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tools.pool.pinpolicy import PinPolicy, hash_pin
from tools.pool.store.contract import Store, User, iso_z, no_such_user


def add_user(
    store: Store,
    policy: PinPolicy,
    sip_uri: str,
    line_uri: str,
    pin: str,
    at: datetime,
    display_name: str = "",
    home_pool: str = "pool.lab.test",
) -> User:
    user = User(sip_uri=sip_uri, line_uri=line_uri, display_name=display_name or sip_uri, home_pool=home_pool)
    policy.check_new_pin(pin, user.number, user.extension)
    store.add_user(user, hash_pin(pin), len(pin), at)
    return user


def set_pin(store: Store, policy: PinPolicy, sip_uri: str, pin: str, at: datetime) -> User:
    """Like Set-CsClientPin: a new PIN that satisfies the policy; a lockout stays until unlocked."""
    user = store.get_user(sip_uri)
    if user is None:
        raise no_such_user(sip_uri)
    policy.check_new_pin(pin, user.number, user.extension)
    store.set_pin(sip_uri, hash_pin(pin), len(pin), at)
    return user


def user_rows(store: Store, at: datetime) -> list[dict[str, Any]]:
    """Every user with the PIN state an administrator asks about (Get-CsClientPinInfo) — never the hash."""
    rows = []
    for user in store.list_users():
        pin = store.pin_record(user.sip_uri)
        rows.append(
            {
                "sip": user.sip_uri,
                "line": user.line_uri,
                "name": user.display_name,
                "enabled": user.enabled,
                "pin_set": pin is not None,
                "pin_set_at": iso_z(pin.set_at) if pin else None,
                "pin_locked": pin.is_locked(at) if pin else False,
                "locked_until": iso_z(pin.locked_until) if pin and pin.locked_until else None,
                "locked_permanently": pin.locked_permanently if pin else False,
                "recent_failures": len(pin.failures) if pin else 0,
                "global_failures": pin.global_failures if pin else 0,
                "certificates": len(store.certificates(user.sip_uri)),
            }
        )
    return rows
