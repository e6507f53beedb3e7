"""The web worker's metrics: the app's answers, counted and timed by a WSGI middleware, and
the batches of its @batched functions (deploy/batching.py)."""

import logging
import time

from prometheus_client import Counter, Histogram

from deploy.metrics import metric

log = logging.getLogger("deploy.metrics")

METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}  # any other: OTHER (bounded labels)
ROUTE_KEY = "flask_stack.route"  # where the Flask rule is kept in the WSGI environ
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, float("inf"))
BATCH_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, float("inf"))


class RequestMetrics:
    """WSGI middleware of each gunicorn worker: counts and times the app's answers."""

    def __init__(self, app, flask_app):
        self.app = app
        self.requests = metric(Counter, "flask_stack_http_requests", "Requests answered by the app",
                               ["method", "route", "status"])
        self.duration = metric(Histogram, "flask_stack_http_request_duration_seconds",
                               "Time the app took to answer", ["method", "route"], buckets=BUCKETS)
        self.failed = False
        if flask_app is not None:
            from flask import request, request_started  # noqa: PLC0415  (a Flask app only)

            def keep_route(sender, **extra):
                request.environ[ROUTE_KEY] = request.url_rule.rule if request.url_rule else "(no route)"
            self._keep_route = keep_route  # blinker holds its receivers weakly
            request_started.connect(keep_route, flask_app)

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        status = ["none"]  # when the app never starts a response (a WebSocket takes the connection over)

        def start(status_line, headers, exc_info=None):
            status[0] = status_line.split(" ", 1)[0]
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            self.count(environ, status[0], time.perf_counter() - started)

    def count(self, environ, status: str, seconds: float) -> None:
        method = environ.get("REQUEST_METHOD", "")
        method = method if method in METHODS else "OTHER"
        route = environ.get(ROUTE_KEY, "(any)")
        try:
            self.requests.labels(method, route, status).inc()
            self.duration.labels(method, route).observe(seconds)
        except Exception:
            if not self.failed:  # once: a full disk would otherwise log every request
                self.failed = True
                log.exception("could not count a request (the request itself was answered)")


def observe_batch(function: str, size: int, waits: list[float]) -> None:
    """A batch of a @batched function started (deploy/batching.py's observer, in each worker)."""
    try:
        metric(Histogram, "flask_stack_batch_size", "Calls gathered into one batch of a @batched function",
               ["function"], buckets=BATCH_SIZE_BUCKETS).labels(function).observe(size)
        wait = metric(Histogram, "flask_stack_batch_wait_seconds",
                      "Each call's wait from its arrival to its batch's start", ["function"],
                      buckets=BATCH_WAIT_BUCKETS).labels(function)
        for seconds in waits:
            wait.observe(seconds)
    except Exception:
        log.exception("could not count a batch (its calls were answered)")
