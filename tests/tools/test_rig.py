"""`phoneprov rig` against byte-exact emulated boards on ptys: the real drivers, a rig file, and a phone
that reports its status (it boots anew each time its relay goes off and on)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hal.emulators.relays import KmtronicModel, LcusModel, PtyEmulator
from tools.cli import main
from tools.rig import load_rig, power_cycle

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def boards() -> Iterator[tuple[PtyEmulator, PtyEmulator]]:
    lcus, kmt = PtyEmulator(LcusModel(4)).start(), PtyEmulator(KmtronicModel(2)).start()
    yield lcus, kmt
    lcus.stop()
    kmt.stop()


class FakePhone:
    """Powered by relay 2 of ``board``: each off→on is a new boot that signs in."""

    def __init__(self, board: PtyEmulator) -> None:
        self.board, self.boots, self.was_on = board, 0, True
        self.stop = threading.Event()
        phone = self

        def watch() -> None:  # the power supply: an off→on edge is a new boot
            while not phone.stop.wait(0.01):
                on = phone.board.relays()[1]
                if on and not phone.was_on:
                    phone.boots += 1
                phone.was_on = on

        threading.Thread(target=watch, daemon=True).start()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server dispatches to
                if not phone.board.relays()[1]:
                    self.send_error(503)
                    return
                body = json.dumps({"state": "signed-in", "boot_started_at": f"boot-{phone.boots}"}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/status"


def rig_file(tmp_path: Path, lcus: PtyEmulator, kmt: PtyEmulator, status_url: str | None = None) -> Path:
    status = f'status_url = "{status_url}"\n' if status_url else ""
    path = tmp_path / "rig.toml"
    path.write_text(
        "[defaults]\noff_s = 0.2\n"
        f'[phones.desk-1]\nboard = "lcus-4"\nchannel = 2\nport = "{lcus.port}"\n{status}'
        f'[phones.desk-2]\nboard = "kmtronic-2"\nchannel = 1\nport = "{kmt.port}"\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code = main(list(argv))
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in argv else out


def test_on_off_status_drive_the_real_boards(
    boards: tuple[PtyEmulator, PtyEmulator], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lcus, kmt = boards
    rig = str(rig_file(tmp_path, lcus, kmt))
    code, out = run(capsys, "rig", "off", "desk-1", "--rig", rig, "--json")
    assert code == 0 and out == {"phone": "desk-1", "power": "off", "knowledge": "observed"}
    assert lcus.relays()[1] is False
    run(capsys, "rig", "on", "desk-2", "--rig", rig, "--json")
    assert kmt.relays()[0] is True
    code, rows = run(capsys, "rig", "status", "--rig", rig, "--json")
    assert code == 0
    assert {r["phone"]: r["power"] for r in rows} == {"desk-1": "off", "desk-2": "on"}  # type: ignore[union-attr]


def test_cycle_waits_for_the_new_boot_to_sign_in(
    boards: tuple[PtyEmulator, PtyEmulator], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lcus, kmt = boards
    phone = FakePhone(lcus)
    try:
        rig = str(rig_file(tmp_path, lcus, kmt, phone.url))
        run(capsys, "rig", "on", "desk-1", "--rig", rig)
        code, out = run(capsys, "rig", "cycle", "desk-1", "--rig", rig, "--wait", "10", "--json")
    finally:
        phone.stop.set()
        phone.server.shutdown()
    assert code == 0 and out["power"] == "on" and out["signed_in_after_s"] is not None  # type: ignore[index]
    assert phone.boots == 1 and b"\xa0\x02\x00\xa2" in bytes(lcus.received)  # LCUS "relay 2 off" on the wire


def test_unplugged_board_is_a_one_line_error(
    boards: tuple[PtyEmulator, PtyEmulator], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lcus, kmt = boards
    rig = str(rig_file(tmp_path, lcus, kmt))
    kmt.unplug()
    assert main(["rig", "off", "desk-2", "--rig", rig]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "desk-2: switching off failed" in err
    # status still reports the phone whose board is there; the missing one says why, on its own row
    assert main(["rig", "status", "--rig", rig, "--json"]) == 1
    rows = {r["phone"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["desk-1"]["power"] in ("on", "off") and "error" not in rows["desk-1"]
    assert rows["desk-2"]["power"] is None and "cannot open the port" in rows["desk-2"]["error"]
    assert main(["rig", "cycle", "desk-2", "--rig", rig, "--wait", "0", "--json"]) == 1
    cycled = json.loads(capsys.readouterr().out)
    assert (
        cycled["error"].startswith("power-cycle failed at 'off'")
        and "phone left as it was" in cycled["error"]
    )


@pytest.mark.parametrize(
    "text",
    [
        "[phones.x]\nchannel = 1\n",
        "nonsense",
        "[phones.x]\nboard = 'lcus-4'\nchannel = 1\nwat = 2\n",
        "[phones.x]\nboard = 'lcus'\nchannel = 1\nport = '/dev/null'\n",
        "defaults = 5\n[phones.x]\nboard = 'lcus-4'\nchannel = 1\nport = '/dev/null'\n",
        "[defaults]\nwat = 1\n[phones.x]\nboard = 'lcus-4'\nchannel = 1\nport = '/dev/null'\n",
        "[phones.x]\nboard = 'lcus-4'\nchannel = 1\nport = '/dev/null'\noff_s = 'long'\n",
        "[phones.x]\nboard = 'lcus-4'\nchannel = 1\nport = '/dev/null'\noff_s = 9999\n",
    ],
)
def test_bad_rig_files_are_one_line(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rig.toml"
    path.write_text(text)
    assert main(["rig", "status", "--rig", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    if "'lcus'" in text:
        assert "unknown board 'lcus'; known: " in err


def test_a_board_lost_during_the_off_time_says_the_phone_is_left_off(
    boards: tuple[PtyEmulator, PtyEmulator], tmp_path: Path
) -> None:
    lcus, kmt = boards
    phones = load_rig(rig_file(tmp_path, lcus, kmt))
    out = power_cycle(phones, "desk-2", sleep=lambda _s: kmt.unplug())
    assert out["power"] is None and out["error"].startswith("power-cycle failed at 'on'")
    assert "phone left OFF" in out["error"]


def test_a_phone_asks_the_rig_to_power_cycle_it(
    boards: tuple[PtyEmulator, PtyEmulator], tmp_path: Path
) -> None:
    """The phone's own hook (tools.bootcmd._rig_hook, agent.toml rig_power_cycle_url) against `rig serve`."""
    from tools.bootcmd import _rig_hook
    from tools.rigserve import RigService, serve

    lcus, kmt = boards
    phones = load_rig(rig_file(tmp_path, lcus, kmt))
    assert main(["rig", "on", "desk-1", "--rig", str(rig_file(tmp_path, lcus, kmt))]) == 0
    server = serve(RigService(phones, cooldown_s=60), ("127.0.0.1", 0))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        hook = _rig_hook(f"{base}/phones/desk-1/cycle")
        assert hook is not None
        hook()  # the phone POSTs, gets 202 before its power goes
        assert lcus.wait_for(lambda r: not r[1], timeout=5)  # relay 2 opens …
        assert lcus.wait_for(lambda r: r[1], timeout=5)  # … and closes again after off_s
        again = urllib.request.Request(f"{base}/phones/desk-1/cycle", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(again, timeout=5)
        assert refused.value.code == 429  # a phone in a loop cannot flap its relay
        unknown = urllib.request.Request(f"{base}/phones/nobody/cycle", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(unknown, timeout=5)
        assert missing.value.code == 404
        deadline = time.monotonic() + 5
        while True:  # the cycle's result is recorded just after the relay closes
            with urllib.request.urlopen(f"{base}/phones", timeout=5) as resp:
                rows = {r["phone"]: r for r in json.loads(resp.read())}
            if rows["desk-1"]["last_cycle"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert rows["desk-1"]["power"] == "on" and rows["desk-1"]["last_cycle"]["power"] == "on"
    finally:
        server.shutdown()
        server.server_close()
