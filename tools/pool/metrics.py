"""Prometheus metrics of one pool node, served at ``GET /metrics`` by the admin listener (admin.py).

- ``phoneprov_requests_total{node,stage,result,code}``: every provisioning-log line, counted by its fields;
- ``phoneprov_registrations_total{node,result,code}``: the REGISTER lines among them;
- ``phoneprov_certificate_issue_seconds{node}``: GetAndPublishCert request in → certificate published;
- ``phoneprov_datastore_up{node}``: 1 when the store answers a read *and* takes a write, else 0.

The counters and the histogram are fed by :meth:`PoolMetrics.observe`, an observer of the node's
:class:`~tools.pool.provlog.ProvisioningLog`: each line parsed back from the text just written, so the
metrics and the log can never disagree. Label values are the log's own fields (no user or device: bounded
label sets, and no identities in a scrape). Each node has its own ``CollectorRegistry`` — never the global
one — so several nodes can run in one process (tests, the demo).

Why the store check writes: in WAL mode (and with PostgreSQL table locks) reads go on while every write
times out — failure 1, where phones get CertProv 3005 — so a read-only ``ping()`` would report 1 all through
the outage. ``ping(write=True)`` takes the write lock and changes nothing. A 3005/4104 line marks the store down at once, without waiting for the next check.

An example alert rule (data store unavailable → phones cannot get certificates) is in
``tools/pool/alerts.yml``; load it with ``rule_files: [alerts.yml]`` in prometheus.yml.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from agent.stages import Stage, one_line
from tools.pool.provlog import ProvLine
from tools.pool.store.contract import Store

log = logging.getLogger("phoneprov.pool.metrics")
STORE_DOWN_CODES = frozenset({"3005", "4104"})  # CertProv DataStoreUnavailable, registrar 4104
ISSUE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def store_probe(store: Store) -> Callable[[], None]:
    """A check that raises unless ``store`` answers a read and takes a (no-op) write."""

    def probe() -> None:
        store.ping(write=True)

    return probe


class DataStoreHealth:
    """Is the store up, answered from a check at most ``check_s`` old; one check in flight at a time.

    A scrape that finds the last check stale starts one (or joins the one running) and waits at most
    ``wait_s``; a check that has not answered by then counts as down. However many scrapes arrive while the
    database hangs, there is only ever one check waiting on it.
    """

    def __init__(
        self,
        probe: Callable[[], None],
        wait_s: float,
        check_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe, self.wait_s, self.check_s, self._monotonic = probe, wait_s, check_s, monotonic
        self._lock = threading.Lock()
        self._up: bool | None = None
        self._checked_at = float("-inf")
        self._running: threading.Event | None = None

    def up(self) -> bool:
        with self._lock:
            if self._up is not None and self._monotonic() - self._checked_at < self.check_s:
                return self._up
            done = self._running
            if done is None:
                done = self._running = threading.Event()
                threading.Thread(target=self._check, args=(done,), name="store-check", daemon=True).start()
        finished = done.wait(self.wait_s)
        with self._lock:
            return bool(self._up) if finished else False

    def saw(self, line: ProvLine) -> None:
        """A request just failed because the store refused a write: down now, checked again later."""
        if line.code in STORE_DOWN_CODES:
            self._set(False, line.detail)

    def _check(self, done: threading.Event) -> None:
        try:
            self._probe()
        except Exception as exc:  # StoreUnavailable, or anything a broken backend raises
            self._set(False, one_line(exc))
        else:
            self._set(True, "")
        finally:
            with self._lock:
                self._running = None
            done.set()

    def _set(self, up: bool, why: str) -> None:
        with self._lock:
            changed = self._up is not up
            self._up, self._checked_at = up, self._monotonic()
        if changed and up:
            log.info("data store available")
        elif changed:  # ``why`` already says "data store unavailable: …" when the store said so
            log.warning("%s", why if "data store unavailable" in why else f"data store unavailable: {why}")


class _StoreUp:
    """``phoneprov_datastore_up``, computed at scrape time (a custom collector: no stale gauge)."""

    def __init__(self, node: str, health: DataStoreHealth) -> None:
        self.node, self.health = node, health

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "phoneprov_datastore_up",
            "1 if the data store answers a read and takes a write, else 0 (phones then get 3005)",
            labels=["node"],
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        family.add_metric([self.node], 1.0 if self.health.up() else 0.0)
        yield family


class PoolMetrics:
    """The metrics of one node in their own registry; :meth:`observe` is the provisioning-log observer."""

    def __init__(self, node: str, health: DataStoreHealth) -> None:
        self.node, self.health = node, health
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "phoneprov_requests",
            "Provisioning requests by stage, result and code (one per provisioning-log line)",
            ["node", "stage", "result", "code"],
            registry=self.registry,
        )
        self.registrations = Counter(
            "phoneprov_registrations",
            "REGISTER outcomes of the registrar by result and SIP status or ms-diagnostics code",
            ["node", "result", "code"],
            registry=self.registry,
        )
        self.issue_seconds = Histogram(
            "phoneprov_certificate_issue_seconds",
            "GetAndPublishCert: request received to certificate published",
            ["node"],
            buckets=ISSUE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreUp(node, health))

    def observe(self, line: ProvLine) -> None:
        self.requests.labels(self.node, line.stage, line.result, line.code).inc()
        if line.stage == Stage.REGISTER:
            self.registrations.labels(self.node, line.result, line.code).inc()
        if line.stage == Stage.CERT_PUBLISH and line.result == "ok" and line.duration_ms is not None:
            self.issue_seconds.labels(self.node).observe(line.duration_ms / 1000)
        self.health.saw(line)
