"""Provisioning users into a store: the PIN is checked against the pool's PIN policy and only its hash kept."""

from __future__ import annotations

from datetime import datetime

from tools.pool.pinpolicy import PinPolicy, hash_pin
from tools.pool.store.contract import Store, User


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
