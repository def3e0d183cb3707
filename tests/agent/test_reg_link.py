"""The phone's REGISTER transport (agent/register.py) against a fake registrar on loopback that misbehaves:
silence, bytes trickled (SIP or raw TLS), a closed connection, garbage, stray answers. Each must end in its
code (TIMEOUT, CONNECTION_LOST, MALFORMED, UNEXPECTED) within the one per-exchange deadline."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from agent.net import Resolver
from agent.register import MAX_IGNORED, RegisterConfig, sign_in
from agent.stages import StageError
from agent.truststore import TrustStore
from agent.wire.sip import SipMessage, SipStreamParser, build_response, encode
from tests.agent.regpki import ALICE, POOL, Pki, T, make_pki

pytestmark = pytest.mark.timeout(30)

TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    pki = make_pki(tmp_path_factory.mktemp("reglink"))
    yield pki
    pki.store.close()


class FixedClock:
    def now(self) -> datetime:
        return T

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Peer:
    """The fake registrar's end of one connection: TLS over memory BIOs, so it can trickle raw records."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext) -> None:
        self.raw, self._in, self._out = raw, ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._parser = SipStreamParser()
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._in.write(self.raw.recv(65536) or b"")
        self._flush()

    def _flush(self, every: float = 0.0) -> None:
        data = self._out.read()
        if not every:
            self.raw.sendall(data)
            return
        for i in range(len(data)):
            self.raw.sendall(data[i : i + 1])
            time.sleep(every)

    def request(self) -> SipMessage:
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._in.write(self.raw.recv(65536) or b"")
                continue
            messages = self._parser.feed(chunk)
            if messages:
                return messages[0]

    def send(self, data: bytes, every: float = 0.0) -> None:
        """``data`` as TLS records; with ``every``, one raw byte of those records per ``every`` seconds."""
        self.tls.write(data)
        self._flush(every)


Behaviour = Callable[[Peer], None]


@contextlib.contextmanager
def fake_registrar(pki: Pki, behave: Behaviour) -> Iterator[int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.ca.tls_cert_chain_pem_path), str(pki.ca.tls_key_path))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            raw, _ = listener.accept()
            with raw:
                raw.settimeout(10)
                behave(Peer(raw, ctx))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=15)


def register(pki: Pki, port: int) -> tuple[StageError, float]:
    """Run stage REGISTER against the fake; the error and how long it took."""
    cfg = RegisterConfig(POOL, port=port, timeout_s=TIMEOUT_S)
    trust, resolver = TrustStore([pki.ca.root]), Resolver({POOL: "127.0.0.1"})
    started = time.monotonic()
    with pytest.raises(StageError) as caught:
        sign_in(cfg, trust, resolver, [], pki.alice, pki.key, ALICE, FixedClock()).close()
    return caught.value, time.monotonic() - started


def _hold(peer: Peer, seconds: float = 3.0) -> None:
    """Keep the connection open (reading) until the phone gives up or ``seconds`` pass."""
    peer.raw.settimeout(seconds)
    with contextlib.suppress(OSError):
        while peer.raw.recv(65536):
            pass


def test_silent_registrar_is_timeout(pki: Pki) -> None:
    def silent(peer: Peer) -> None:
        peer.request()
        _hold(peer)

    with fake_registrar(pki, silent) as port:
        error, took = register(pki, port)
    assert error.code == "TIMEOUT" and took < 2.0


def test_registrar_trickling_sip_cannot_hold_the_phone(pki: Pki) -> None:
    """Each recv gets a byte well within the timeout; the exchange's one deadline still ends it."""

    def trickle(peer: Peer) -> None:
        peer.request()
        for byte in b"SIP/2.0 100 Trying\r\nVia: x\r\n" * 10:
            peer.send(bytes([byte]))
            time.sleep(0.05)

    with fake_registrar(pki, trickle) as port:
        error, took = register(pki, port)
    assert error.code == "TIMEOUT" and took < 2.0


def test_registrar_trickling_a_tls_record_cannot_hold_the_phone(pki: Pki) -> None:
    """One TLS record, its raw bytes one at a time: no recv ever completes, each wait sees data."""

    def trickle(peer: Peer) -> None:
        peer.request()
        with contextlib.suppress(OSError):
            peer.send(b"SIP/2.0 100 Trying\r\n" * 20, every=0.05)

    with fake_registrar(pki, trickle) as port:
        error, took = register(pki, port)
    assert error.code == "TIMEOUT" and took < 2.0


def test_registrar_closing_is_connection_lost(pki: Pki) -> None:
    def hang_up(peer: Peer) -> None:
        peer.request()  # then the connection closes

    with fake_registrar(pki, hang_up) as port:
        error, _ = register(pki, port)
    assert error.code == "CONNECTION_LOST"


def test_registrar_speaking_http_is_malformed(pki: Pki) -> None:
    def http(peer: Peer) -> None:
        peer.request()
        peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        _hold(peer)

    with fake_registrar(pki, http) as port:
        error, _ = register(pki, port)
    assert error.code == "MALFORMED"


def _strays(count: int, without_cseq: bool) -> Behaviour:
    """``count`` final answers that answer nothing (another CSeq, or none at all), then a close."""

    def strays(peer: Peer) -> None:
        a = peer.request()
        for n in range(count):
            stray = build_response(a.replace_header("CSeq", f"{100 + n} REGISTER"), 401, "Unauthorized", [])
            peer.send(encode(stray.without_header("CSeq") if without_cseq else stray))
        _hold(peer, 0.2)

    return strays


@pytest.mark.parametrize("without_cseq", [False, True])
def test_more_than_max_ignored_strays_is_unexpected(pki: Pki, without_cseq: bool) -> None:
    with fake_registrar(pki, _strays(MAX_IGNORED + 1, without_cseq)) as port:
        error, _ = register(pki, port)
    assert error.code == "UNEXPECTED" and "answer nothing" in error.detail


def test_up_to_max_ignored_strays_are_tolerated(pki: Pki) -> None:
    with fake_registrar(pki, _strays(MAX_IGNORED, without_cseq=True)) as port:
        error, _ = register(pki, port)
    assert error.code == "CONNECTION_LOST"  # read past all the strays, then saw the close
