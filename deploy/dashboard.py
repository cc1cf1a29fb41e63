"""``streamrec dashboard``: a read-only live dashboard on the embedded default.

One process (or, inside ``streamrec up``, two threads): a sampler that every ``interval_s``
reads consumer lag (:class:`streaming.ops.lag_monitor.LagMonitor`) and scrapes every component's
``/metrics``, and an HTTP server on ``runtime.bind_host`` (loopback by default) with:

- ``GET /``: the page (inline JS, no CDN: it works offline);
- ``GET /api/series``: the time series as JSON (the last ``keep`` points);
- ``GET /metrics``: the lag monitor's Prometheus metrics (``kafka_consumergroup_lag`` ...).

Anything else is 404, any other method 405: nothing on the page can change the system.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

import orjson
from prometheus_client import generate_latest

from deploy.series import Scrape, bucket_delta, histogram_quantile, parse_scrape, rate
from streaming.errors import BrokerError
from streaming.ops.lag_monitor import LagMonitor
from streaming.ops.metrics import STAGES
from streaming.settings import Settings

log = logging.getLogger(__name__)
_RESTARTS = "streamrec_component_restarts"


class Sampler:
    """Collects chart points. ``metrics_urls`` is called each time (components may come and go)."""

    def __init__(self, settings: Settings, metrics_urls: Callable[[], dict[str, str]],
                 interval_s: float = 2.0, keep: int = 1800) -> None:
        self.monitor = LagMonitor(settings, interval_s=interval_s)
        self.metrics_urls = metrics_urls
        self.interval_s = interval_s
        self.points: deque[dict[str, Any]] = deque(maxlen=keep)
        self._prev: Scrape | None = None
        self._lock = threading.Lock()

    def _scrape(self) -> tuple[Scrape, dict[str, bool]]:
        texts, up = [], {}
        for name, url in sorted(self.metrics_urls().items()):
            try:
                with urllib.request.urlopen(url, timeout=1.5) as resp:
                    texts.append(resp.read().decode())
                up[name] = True
            except (urllib.error.URLError, OSError, ValueError):
                up[name] = False
        return parse_scrape(texts, time.time()), up

    def sample(self) -> dict[str, Any]:
        """Scrape every component once and append one point to the series."""
        point: dict[str, Any] = {"t": int(time.time() * 1000)}
        try:
            snap = self.monitor.sample()
            groups = snap.by_group()
            point["lag"] = {g: v["lag"] for g, v in groups.items()}
            point["lag_seconds"] = {g: v["lag_seconds"] for g, v in groups.items()}
            point["lag_status"] = dict(snap.status)
            point["lag_anomalies"] = sum(1 for p in snap.partitions if p.anomaly)
        except BrokerError as exc:
            log.warning("%s", exc)
        cur, up = self._scrape()
        point["up"] = up
        # The supervisor's counters (streamrec up): restarts per component so far.
        point["restarts"] = {k[len(_RESTARTS) + 1:-1]: int(v) for k, v in cur.counters.items()
                             if k.startswith(_RESTARTS + "{")}
        g = cur.gauges
        point["model_version"] = max((v for k, v in g.items()
                                      if k.startswith("streamrec_model_version")), default=None)
        # Safe promotion (trainer): what scorers are told to serve, and whether the newest
        # checkpoint was held back by the held-out check.
        point["served_version"] = g.get("streamrec_model_served_version")
        point["held_back"] = g.get("streamrec_model_candidate_held_back")
        point["promotions"] = {r: int(cur.counters.get(f"streamrec_model_promotions{{{r}}}", 0))
                               for r in ("promoted", "held_back")}
        point["auc"] = g.get("streamrec_trainer_prequential_auc")
        point["logloss"] = g.get("streamrec_trainer_prequential_logloss")
        point["loss"] = g.get("streamrec_trainer_loss")
        prev = self._prev
        if prev is not None:
            point["rates"] = {
                "events_processed": rate(prev, cur, "streamrec_events{processed}"),
                "dead_lettered": rate(prev, cur, "streamrec_dead_lettered"),
                "examples": rate(prev, cur, "streamrec_examples"),
                "trained": rate(prev, cur, "streamrec_trainer_examples"),
                "feeds_written": rate(prev, cur, "streamrec_feeds_written"),
            }
            point["latency_s"] = {}
            for stage in STAGES:
                delta = bucket_delta(prev, cur, stage)
                point["latency_s"][stage] = {"p50": histogram_quantile(0.5, delta),
                                             "p99": histogram_quantile(0.99, delta)}
        self._prev = cur
        with self._lock:
            self.points.append(point)
        return point

    def series(self) -> list[dict[str, Any]]:
        """The points kept so far, oldest first."""
        with self._lock:
            return list(self.points)

    def run(self, stop: threading.Event) -> None:
        """Sample every ``interval_s`` until closed (the sampler thread)."""
        while not stop.is_set():
            started = time.monotonic()
            self.sample()
            stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def close(self) -> None:
        """Stop sampling."""
        self.monitor.close()


def _page() -> bytes:
    return resources.files("deploy").joinpath("dashboard.html").read_bytes()


def _handler(sampler: Sampler) -> type[BaseHTTPRequestHandler]:
    page = _page()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", page)
            elif path == "/api/series":
                self._send(200, "application/json", orjson.dumps(
                    {"points": sampler.series(), "interval_s": sampler.interval_s}))
            elif path == "/metrics":
                self._send(200, "text/plain; version=0.0.4",
                           generate_latest(sampler.monitor.metrics.registry))
            else:
                self._send(404, "text/plain", b"not found\n")

        def _refuse(self) -> None:
            self._send(405, "text/plain", b"read-only\n")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


class Dashboard:
    """Sampler + HTTP server, started and stopped together."""

    def __init__(self, settings: Settings, metrics_urls: Callable[[], dict[str, str]],
                 port: int | None = None, interval_s: float = 2.0) -> None:
        self.sampler = Sampler(settings, metrics_urls, interval_s)
        host = settings.runtime.bind_host
        self.server = ThreadingHTTPServer(
            (host, settings.runtime.dashboard_port if port is None else port),
            _handler(self.sampler))
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.server.serve_forever, name="dashboard-http", daemon=True),
            threading.Thread(target=self.sampler.run, args=(self._stop,), name="dashboard-sampler",
                             daemon=True),
        ]

    @property
    def url(self) -> str:
        """Where the dashboard is served."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> Dashboard:
        """Start the sampler and the HTTP server; returns ``self``."""
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        """Stop serving and sampling."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for t in self._threads:
            t.join(10)
        self.sampler.close()
