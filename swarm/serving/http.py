"""``python -m swarm serve``: the search endpoint, routed by the rollout share (stdlib HTTP, JSON in and out).

* ``POST /search`` with ``{"query": "...", "k": 10, "caller": "user-42"}`` answers
  ``{"arm": "new", "results": [{"id": "17", "distance": 0.21}, ...], "latency_ms": ..., ...}``.
  A bad request is 400 with ``{"error": "..."}``; a search that failed on both arms is 503.
* ``GET /health`` answers ``{"status": "ok", "migration": 3, "percent": 25.0, "use_new": true}``.

Binds 127.0.0.1 by default: it is an internal endpoint with no authentication. Each request runs on its own
thread (``ThreadingHTTPServer``); the router gives each thread its own database connection. A monitor thread
evaluates the alert rules every few seconds over the last minute of traffic; an ``error_rate`` alert firing
while the share is between 0% and 100% sets the share to 0% at once (the data stays; ``rollout`` resumes).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from swarm.core.errors import SwarmError, UsageError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    from swarm.core.config import Config
    from swarm.serving.router import Router

log = get_logger()

MAX_BODY = 1 << 20


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], router: Router) -> None:
        super().__init__(address, _Handler)
        self.router = router

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: SearchServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's signature)
        log.debug("http.request", line=format % args)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/health":
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found; use POST /search or GET /health"})
            return
        try:
            share = self.server.router.share()
        except SwarmError as e:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "error": str(e)})
            return
        self._send(
            HTTPStatus.OK,
            {
                "status": "ok",
                "migration": share.migration_id,
                "percent": share.percent,
                "use_new": share.use_new,
            },
        )

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/search":
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found; use POST /search"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise UsageError(f"body of {length} bytes; send a JSON object of at most {MAX_BODY} bytes")
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                raise UsageError('the body is not JSON; send {"query": "...", "k": 10, "caller": "..."}') from None
            if not isinstance(body, dict) or not isinstance(body.get("query"), str):
                raise UsageError('expected {"query": "<text>", "k": <int>, "caller": "<key>"}')
            k = body.get("k", 10)
            if not isinstance(k, int) or isinstance(k, bool):
                raise UsageError(f"k = {k!r}: must be an integer")
            caller = body.get("caller")
            if caller is not None and not isinstance(caller, str):
                raise UsageError(f"caller = {caller!r}: must be a string")
            result = self.server.router.search(body["query"], k=k, caller=caller)
        except UsageError as e:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        except SwarmError as e:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
            return
        self._send(HTTPStatus.OK, result.as_dict())


def make_server(
    cfg: Config, dsn: str, *, host: str = "127.0.0.1", port: int = 8765, router: Router | None = None
) -> SearchServer:
    """A server bound to (host, port) (port 0: any free port), not yet serving."""
    from swarm.serving.router import Router

    return SearchServer((host, port), router or Router(cfg, dsn, source="serve"))


class AlertMonitor(threading.Thread):
    """Evaluates the alert rules every ``interval`` seconds while the server runs."""

    def __init__(self, cfg: Config, dsn: str, router: Router, *, interval: float = 5.0) -> None:
        super().__init__(name="swarm-alerts", daemon=True)
        from swarm.serving.alerts import load_rules
        from swarm.store.db import Database

        self.cfg, self.router, self.interval = cfg, router, interval
        self.db = Database(dsn, application_name="swarm:alerts")
        self.rules = load_rules(cfg.path(cfg.rollout.alerts))
        self.stop_event = threading.Event()
        self._evaluator: Any = None
        self._mid: int | None = None

    def run(self) -> None:
        from swarm.serving.alerts import AlertEvaluator
        from swarm.serving.rollout import TRAFFIC, set_percent

        while not self.stop_event.wait(self.interval):
            try:
                share = self.router.share()
                if self._evaluator is None or share.migration_id != self._mid:
                    self._mid = share.migration_id
                    self._evaluator = AlertEvaluator(
                        self.rules,
                        self.db,
                        migration_id=self._mid,
                        webhook_url=self.cfg.rollout.webhook_url,
                        sources=TRAFFIC,
                    )
                for st in self._evaluator.evaluate():
                    if (
                        st.state == "firing"
                        and st.rule.rolls_back
                        and share.migration is not None
                        and 0 < share.percent < 100
                    ):
                        set_percent(self.db, share.migration, 0, reason=f"alert {st.rule.name} fired")
                        self.router.share(refresh=True)
            except Exception:  # keep monitoring; the server must not die with its monitor
                log.exception("alerts.monitor_error")

    def stop(self) -> None:
        self.stop_event.set()


def serve(cfg: Config, dsn: str, *, host: str = "127.0.0.1", port: int = 8765, out: Any = print) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(cfg, dsn, host=host, port=port)
    monitor = AlertMonitor(cfg, dsn, server.router)
    monitor.start()
    out(f"serving on {server.url} (POST /search, GET /health); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop()
        server.server_close()
        server.router.close()
