"""``python -m swarm serve``: the search endpoint, routed by the rollout share (stdlib HTTP, JSON in and out).

* ``POST /search`` with ``{"query": "...", "k": 10, "caller": "user-42", "where": {"lang": "py"},
  "columns": ["name"]}`` answers ``{"arm": "new", "results": [{"id": "17", "distance": 0.21, "columns":
  {"name": "split"}}, ...], "latency_ms": ..., ...}``.
* ``GET /health`` answers ``{"status": "ok", "migration": 3, "percent": 25.0, "use_new": true}``.
* ``GET /metrics``: Prometheus text format: per arm requests, errors and a latency histogram, the share, HTTP
  responses by code, searches shed, the pool.

Answers, each error a JSON object with one line in ``error``: 400 for a bad body (not JSON, unknown key, wrong
type, unknown column), 401 without the right bearer token, 404 for another path, 411 without a
Content-Length, 413 for a body over ``serving.max_body_bytes``, 503 when the search was shed (no database
connection free within ``serving.pool_timeout_s``, or more than ``serving.max_inflight`` searches at once;
with ``Retry-After: 1``) or failed on both arms.

Each request runs on its own thread (``ThreadingHTTPServer``); every thread searches through one router and its
bounded pool, so the server never holds more than ``serving.pool_size`` database connections, whatever the
number of clients. Binds 127.0.0.1 by default; on any other address it refuses to start without a token
(``--token`` or ``SWARM_SERVE_TOKEN``), which it then requires on every request (``Authorization: Bearer``,
compared in constant time). A monitor thread evaluates the alert rules every few seconds over the last minute
of traffic; an ``error_rate`` alert firing while the share is between 0% and 100% sets the share to 0% at once
(the data stays; ``rollout`` resumes).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from swarm.core.errors import DatabaseUnavailable, Overloaded, SwarmError, UsageError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    from swarm.core.config import Config
    from swarm.serving.router import Router

log = get_logger()

BODY_KEYS = ("query", "k", "caller", "where", "columns")
TOKEN_ENV = "SWARM_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address (``localhost``, 127.0.0.0/8, ``::1``)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], router: Router, *, token: str | None = None) -> None:
        super().__init__(address, _Handler)
        self.router = router
        self.token = token or None
        sv = router.cfg.serving
        self.max_body = sv.max_body_bytes
        self.inflight = threading.BoundedSemaphore(sv.max_inflight)
        self._lock = threading.Lock()
        self.responses: dict[int, int] = {}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, status: int) -> None:
        with self._lock:
            self.responses[status] = self.responses.get(status, 0) + 1

    def close(self) -> None:
        """Stop answering, close the socket and the router (its record is flushed)."""
        self.server_close()
        self.router.close()


class _Bad(Exception):
    """A request answered with an error status and one line."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class _Handler(BaseHTTPRequestHandler):
    server: SearchServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops sending mid-request frees its thread
    # Headers and body go out in two writes: without TCP_NODELAY the body waits for the client's delayed ACK
    # (~40 ms per response on a keep-alive connection with one request at a time).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib's signature)
        log.debug("http.request", line=format % args)

    def _send(
        self,
        status: int,
        body: dict[str, Any] | str,
        *,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        if isinstance(body, str):
            data, ctype = body.encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8"
        else:
            data, ctype = json.dumps(body, default=str).encode("utf-8"), "application/json"
        self.server.count(int(status))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: _Bad, headers: dict[str, str] | None = None) -> None:
        self._send(e.status, {"error": e.message}, close=e.close, headers=headers)

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode()):
            return True
        # The body (if any) is not read: close the connection rather than parse what follows as a request.
        self._error(
            _Bad(
                HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token; send Authorization: Bearer <token>", close=True
            ),
            headers={"WWW-Authenticate": 'Bearer realm="swarm"'},
        )
        return False

    # -- GET -----------------------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, prometheus(self.server))
            return
        if path != "/health":
            self._error(_Bad(HTTPStatus.NOT_FOUND, "not found; use POST /search, GET /health or GET /metrics"))
            return
        try:
            share = self.server.router.share()
        except SwarmError as e:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "error": str(e)})
            return
        self._send(
            HTTPStatus.OK,
            {"status": "ok", "migration": share.migration_id, "percent": share.percent, "use_new": share.use_new},
        )

    # -- POST ----------------------------------------------------------------------------------------------
    def _body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            raise _Bad(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send Content-Length", close=True)
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _Bad(HTTPStatus.LENGTH_REQUIRED, "no Content-Length; send the JSON body with its length", close=True)
        try:
            length = int(raw)
        except ValueError:
            raise _Bad(HTTPStatus.BAD_REQUEST, f"Content-Length {raw!r} is not a number", close=True) from None
        if length > self.server.max_body:
            raise _Bad(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes; at most {self.server.max_body} (serving.max_body_bytes)",
                close=True,
            )
        if length <= 0:
            raise _Bad(HTTPStatus.BAD_REQUEST, 'empty body; send {"query": "...", "k": 10, "caller": "..."}')
        data = self.rfile.read(length)
        try:
            body = json.loads(data)
        except ValueError:
            raise _Bad(
                HTTPStatus.BAD_REQUEST, 'the body is not JSON; send {"query": "...", "k": 10, "caller": "..."}'
            ) from None
        if not isinstance(body, dict):
            raise _Bad(HTTPStatus.BAD_REQUEST, 'expected a JSON object: {"query": "<text>", "k": 10, ...}')
        unknown = [k for k in body if k not in BODY_KEYS]
        if unknown:
            raise _Bad(HTTPStatus.BAD_REQUEST, f"unknown key {unknown[0]!r}; use {', '.join(BODY_KEYS)}")
        if not isinstance(body.get("query"), str):
            raise _Bad(HTTPStatus.BAD_REQUEST, 'query must be a string: {"query": "<text>"}')
        caller = body.get("caller")
        if caller is not None and not isinstance(caller, str):
            raise _Bad(HTTPStatus.BAD_REQUEST, f"caller = {caller!r}: must be a string")
        cols = body.get("columns", [])
        if not isinstance(cols, list):
            raise _Bad(HTTPStatus.BAD_REQUEST, f"columns = {cols!r}: must be a list of column names")
        return body

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():
            return
        if self.path.split("?", 1)[0] != "/search":
            self._error(_Bad(HTTPStatus.NOT_FOUND, "not found; use POST /search", close=True))
            return
        try:
            body = self._body()
        except _Bad as e:
            self._error(e)
            return
        if not self.server.inflight.acquire(blocking=False):
            self.server.router.recorder.live.count("shed")
            self._send(
                HTTPStatus.SERVICE_UNAVAILABLE,
                {"error": "too many searches in progress (serving.max_inflight); retry shortly"},
                headers={"Retry-After": "1"},
            )
            return
        try:
            result = self.server.router.search(
                body["query"],
                k=body.get("k", 10),
                caller=body.get("caller"),
                where=body.get("where"),
                columns=body.get("columns", ()),
            )
        except UsageError as e:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        except (Overloaded, DatabaseUnavailable) as e:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)}, headers={"Retry-After": "1"})
            return
        except SwarmError as e:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)})
            return
        finally:
            self.server.inflight.release()
        self._send(HTTPStatus.OK, result.as_dict())


# ------------------------------------------------------------------------------------------------------------
# /metrics
# ------------------------------------------------------------------------------------------------------------
def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kv: Any) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items()) + "}" if kv else ""


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def prometheus(server: SearchServer) -> str:
    """This process's counters in Prometheus' text format (0.0.4)."""
    from swarm.store.querylog import BOUNDS_MS

    router = server.router
    live = router.recorder.live.snapshot()
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{_labels(**labels)} {_num(value)}" for labels, value in samples)

    arms = sorted(live["requests"])
    metric(
        "swarm_search_requests_total",
        "counter",
        "Searches on each arm (a fallback counts on both).",
        [({"arm": a}, live["requests"][a]) for a in arms],
    )
    metric(
        "swarm_search_errors_total",
        "counter",
        "Searches that failed on each arm.",
        [({"arm": a}, live["errors"].get(a, 0)) for a in arms],
    )
    out.append("# HELP swarm_search_latency_seconds Embedding + search time of successful searches, per arm.")
    out.append("# TYPE swarm_search_latency_seconds histogram")
    for a in arms:
        hist = live["latency_hist"].get(a, [])
        cum = 0
        for bound, n in zip((*BOUNDS_MS, float("inf")), hist, strict=False):
            cum += n
            le = "+Inf" if bound == float("inf") else _num(bound / 1000)
            out.append(f"swarm_search_latency_seconds_bucket{_labels(arm=a, le=le)} {cum}")
        total = live["latency_sum_ms"].get(a, 0.0) / 1000
        out.append(f"swarm_search_latency_seconds_sum{_labels(arm=a)} {_num(total)}")
        out.append(f"swarm_search_latency_seconds_count{_labels(arm=a)} {cum}")
    metric("swarm_search_fallbacks_total", "counter", "Searches answered from legacy after the new arm failed.",
           [({}, live["fallbacks"])])  # fmt: skip
    metric(
        "swarm_search_exact_total",
        "counter",
        "Filtered searches the ANN index answered with fewer than k rows, repeated exactly.",
        [({}, live["exact_fallbacks"])],
    )
    metric(
        "swarm_search_shed_total",
        "counter",
        "Searches refused with 503 because no database connection (or handler) was free in time.",
        [({}, live["shed"])],
    )
    with server._lock:
        responses = dict(server.responses)
    metric(
        "swarm_http_responses_total",
        "counter",
        "HTTP responses by status code.",
        [({"code": c}, n) for c, n in sorted(responses.items())],
    )
    share = router._share
    if share is not None:
        metric(
            "swarm_rollout_share_percent",
            "gauge",
            "Share of callers routed to the new column (as this process last read it).",
            [({"migration": share.migration_id or 0}, float(share.percent))],
        )
        metric("swarm_new_arm_enabled", "gauge", "0 when the kill switch sends every search to legacy.",
               [({}, int(share.use_new))])  # fmt: skip
    stats = router.pool.stats()
    metric("swarm_pool_max_connections", "gauge", "serving.pool_size.", [({}, router.pool.max_size)])
    metric("swarm_pool_connections", "gauge", "Database connections open now.", [({}, stats.get("pool_size", 0))])
    metric("swarm_pool_available", "gauge", "Of those, idle.", [({}, stats.get("pool_available", 0))])
    metric(
        "swarm_pool_waiting", "gauge", "Searches waiting for a connection.", [({}, stats.get("requests_waiting", 0))]
    )
    rec = router.recorder
    metric("swarm_record_dropped_total", "counter", "Searches not recorded (buffer full).", [({}, rec.dropped)])
    metric("swarm_record_flushes_total", "counter", "Flushes of the search record.", [({}, rec.flushes)])
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Serving
# ------------------------------------------------------------------------------------------------------------
def make_server(
    cfg: Config,
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    router: Router | None = None,
    token: str | None = None,
) -> SearchServer:
    """A server bound to (host, port) (port 0: any free port), not yet serving. Refuses a non-loopback address
    without a token (:class:`UsageError`: exit 2)."""
    from swarm.serving.router import Router

    if not token and not is_loopback(host):
        raise UsageError(
            f"--host {host} is not a loopback address and no token is set: anyone who reaches it could search; "
            f"pass --token or set {TOKEN_ENV}"
        )
    router = router or Router(cfg, dsn, source="serve")
    try:
        return SearchServer((host, port), router, token=token)
    except OSError as e:
        router.close()
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class AlertMonitor(threading.Thread):
    """Evaluates the alert rules every ``interval`` seconds while the server runs (on the router's pool)."""

    def __init__(self, cfg: Config, router: Router, *, interval: float = 5.0) -> None:
        super().__init__(name="swarm-alerts", daemon=True)
        from swarm.serving.alerts import load_rules

        self.cfg, self.router, self.interval = cfg, router, interval
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
                        self.router.pool,
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
                        set_percent(self.router.pool, share.migration, 0, reason=f"alert {st.rule.name} fired")
                        self.router.share(refresh=True)
            except Exception:  # keep monitoring; the server must not die with its monitor
                log.exception("alerts.monitor_error")

    def stop(self) -> None:
        self.stop_event.set()


def serve(
    cfg: Config,
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    out: Any = print,
) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server = make_server(cfg, dsn, host=host, port=port, token=token)
    monitor = AlertMonitor(cfg, server.router)
    monitor.start()
    auth = "bearer token required" if server.token else "no token (loopback only)"
    out(f"serving on {server.url} (POST /search, GET /health, GET /metrics; {auth}); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        monitor.stop()
        server.close()
