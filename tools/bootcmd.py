"""`phoneprov boot` and `phoneprov status`: the phone's firmware entry and a look at what it is doing."""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from boot import config as agent_config
from boot.sequence import Boot
from boot.status import BootStatus, StatusServer


class _JsonLines(logging.Handler):
    """Structured log lines (one JSON object each) next to the human journal output."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        line = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        except OSError:
            self.handleError(record)


def boot_main(path: Path, once: bool = False) -> int:
    cfg = agent_config.load(path)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("phoneprov").setLevel(logging.INFO)  # even when something configured the root first
    if cfg.log_json_path is not None:
        logging.getLogger("phoneprov").addHandler(_JsonLines(cfg.log_json_path))
    status = BootStatus()
    server = _status_server(status, cfg.status_listen)
    boot = Boot(
        cfg,
        status=status,
        power_cycle=_rig_hook(cfg.retry.rig_power_cycle_url),
        reload=lambda: agent_config.load(path),
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        boot.stopping.set()  # honoured between stages, never inside a state write

    signal.signal(signal.SIGTERM, stop)
    try:
        if once:
            run = boot.attempt()
            if run.session is not None:
                run.session.close()
            return 0 if run.ok else 1
        return boot.run()
    finally:
        boot.notifier.stopping()
        if boot.tether is not None:
            boot.tether.stop()
        if boot.session is not None:
            try:
                boot.session.unregister()  # a clean shutdown says goodbye; a power cut cannot
            except Exception as exc:  # shutting down regardless
                logging.getLogger("phoneprov.boot").info("unregister on shutdown failed: %s", exc)
            boot.session.close()
        if server is not None:
            server.stop()


def _status_server(status: BootStatus, listen: tuple[str, int] | None) -> StatusServer | None:
    """The status endpoint is a convenience: a taken port or a bad address must not stop the phone."""
    log = logging.getLogger("phoneprov.boot")
    if listen is None:
        return None
    if not ipaddress.ip_address(listen[0]).is_loopback:
        log.warning(
            "status endpoint on %s:%d is reachable from the network (unauthenticated, read-only)", *listen
        )
    try:
        return StatusServer(status, listen).start()
    except OSError as exc:
        log.warning("no status endpoint on %s:%d: %s", listen[0], listen[1], exc)
        return None


def _rig_hook(url: str | None) -> Callable[[], None] | None:
    """The seed's remedy, automated: ask the rig to power-cycle this phone (POST to the configured URL)."""
    if url is None:
        return None
    log = logging.getLogger("phoneprov.boot")

    def cycle() -> None:
        request = urllib.request.Request(url, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                log.warning("asked the rig to power-cycle this phone: HTTP %s", resp.status)
        except (urllib.error.URLError, OSError) as exc:
            log.warning("the rig did not take the power-cycle request (%s): %s", url, exc)

    return cycle


def status_main(url: str, as_json: bool = False) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # a local, plain-HTTP status page
            doc = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"phoneprov: error: no phone status at {url} ({exc})", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0 if doc.get("state") == "signed-in" else 1
    print(f"state        {doc.get('state')} (attempt {doc.get('attempt')})")
    print(f"stage        {doc.get('stage') or '-'}")
    cert = doc.get("certificate")
    print(f"certificate  {cert['subject'] + ' serial ' + cert['serial'] if cert else '-'}")
    print(f"expires      {cert['not_after'] if cert else '-'}")
    err = doc.get("last_error")
    print(f"last error   {err['stage'] + ' ' + err['code'] + ': ' + err.get('problem', '') if err else '-'}")
    return 0 if doc.get("state") == "signed-in" else 1
