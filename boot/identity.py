"""Who may write the phone's identity, and when: network sign-in and the USB tether race, the first wins.

A phone serving the tether while it also signs in over the network could otherwise end up with two
certificates and a key belonging to neither. Every write goes through :class:`IdentityKeeper` under one
lock; the tether's certificate is accepted only while a certificate is actually wanted (none stored, one
inside its renewal margin, or one the registrar refused), and its arrival wakes the boot loop at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import rsa

from agent import enroll
from agent.phone import StoredIdentity
from boot.store import Identity, StateStore
from boot.tether import TetherService

log = logging.getLogger("phoneprov.boot")


class KeyPrefetch:
    """RSA key generation started now, joined when CERT_REQUEST needs it: cold sign-in ≈ max(keygen, network)."""

    def __init__(self, bits: int) -> None:
        self._future: Future[rsa.RSAPrivateKey] = Future()
        threading.Thread(target=self._make, args=(bits,), name="keygen", daemon=True).start()

    def _make(self, bits: int) -> None:
        try:
            self._future.set_result(enroll.generate_key(bits))
        except BaseException as exc:  # surfaced in get(), in the stage that needs the key
            self._future.set_exception(exc)

    def get(self) -> rsa.RSAPrivateKey:
        return self._future.result()


class IdentityKeeper:
    """The single writer of ``identity.pem``; ``margin`` is the renewal margin for an identity, ``now`` the
    phone's (SNTP-corrected) time."""

    def __init__(
        self, store: StateStore, margin: Callable[[Identity], timedelta], now: Callable[[], datetime]
    ) -> None:
        self.store, self._margin, self._now = store, margin, now
        self.refused = False  # the registrar refused the stored certificate: a new one is wanted
        self.arrived = threading.Event()  # set when the tether installed one; every wait watches it
        self.tether: TetherService | None = None
        self._lock = threading.Lock()

    def wanted(self) -> bool:
        """No identity, one within its renewal margin (at the phone's time), or one the registrar refused."""
        identity = self.store.load_identity()
        if identity is None or self.refused:
            return True
        return not self.store.identity_valid_for(self._now(), self._margin(identity))

    def save_from_network(self, identity: Identity) -> None:
        with self._lock:
            self.store.save_identity(identity)
            self.refused = False

    def install_from_tether(self, new: StoredIdentity) -> None:
        """Called from the tether thread; raising tells the PC why nothing was installed."""
        with self._lock:
            if not self.wanted():
                raise RuntimeError("the phone already has a valid certificate (it signed in meanwhile)")
            self.store.save_identity(Identity(new.key, new.certificate, new.intermediates))
            self.refused = False
        log.info("a certificate arrived over the USB tether: signing in with it")
        self.arrived.set()

    def sync_tether(self) -> None:
        """Serve the tether exactly while a certificate is wanted."""
        if self.tether is None:
            return
        if self.wanted():
            self.tether.start()
        elif self.tether.running:
            self.tether.stop(timeout_s=0)
